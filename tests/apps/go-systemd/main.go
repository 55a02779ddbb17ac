// The Go app of the matrix (docs/apps.md) through github.com/coreos/go-systemd:
// activation.Listeners() takes the sockets baton passes (fd 3...), and
// daemon.SdNotify sends READY=1. Otherwise as tests/apps/go-stdlib: run as
// `app.VERSION -c cfg.VERSION`, cfg.VERSION is JSON {"release": "1.0"}; GET /
// answers "release VERSION pid PID", GET /slow?ms=N after N ms; SIGTERM or
// SIGINT drains (http.Server.Shutdown).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	cfgPath := flag.String("c", "", "config file (JSON)")
	flag.Parse()
	var cfg struct {
		Release string `json:"release"`
	}
	raw, err := os.ReadFile(*cfgPath)
	if err == nil {
		err = json.Unmarshal(raw, &cfg)
	}
	if err == nil && cfg.Release == "" {
		err = errors.New(`no "release"`)
	}
	if err != nil {
		log.Fatalf("config %s: %v", *cfgPath, err)
	}
	// Checks LISTEN_PID, unsets LISTEN_*, marks the fds close-on-exec.
	listeners, err := activation.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	if len(listeners) == 0 {
		log.Fatal("no inherited socket (LISTEN_PID/LISTEN_FDS); run me under baton")
	}

	pid := os.Getpid()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "release %s pid %d\n", cfg.Release, pid)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil {
			ms = 1000
		}
		if ms > 600_000 {
			ms = 600_000
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "release %s pid %d slept %d ms\n", cfg.Release, pid, ms)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	for _, ln := range listeners {
		ln := ln
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Fatal(err)
			}
		}()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=release "+cfg.Release); err != nil {
		log.Printf("notify: %v", err)
	}
	log.Printf("go-systemd[%d] release %s: accepting on %d socket(s)", pid, cfg.Release, len(listeners))
	sig := <-stop
	log.Printf("go-systemd[%d] release %s: %v, draining", pid, cfg.Release, sig)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}
