// The Go app of the matrix (docs/apps.md), standard library only. A release
// is the binary `go build` makes, run by baton as `app.VERSION -c
// cfg.VERSION` with the listening socket at fd 3; cfg.VERSION is JSON:
// {"release": "1.0"}.
//
// GET / answers "release VERSION pid PID"; GET /slow?ms=N answers the same
// after N ms. It sends READY=1 once it serves, and on SIGTERM or SIGINT
// stops accepting and exits once the requests in flight are answered
// (http.Server.Shutdown).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// listener takes the socket baton passes as fd 3.
func listener() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") == "" {
		return nil, errors.New("no inherited socket (LISTEN_PID/LISTEN_FDS); run me under baton")
	}
	f := os.NewFile(3, "listener")
	defer f.Close() // FileListener works on a dup of fd 3
	return net.FileListener(f)
}

// notify sends state (e.g. "READY=1") to NOTIFY_SOCKET, as sd_notify(3) does.
func notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] == '@' { // abstract namespace
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

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
	ln, err := listener()
	if err != nil {
		log.Fatal(err)
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
		time.Sleep(time.Duration(min(ms, 600_000)) * time.Millisecond)
		fmt.Fprintf(w, "release %s pid %d slept %d ms\n", cfg.Release, pid, ms)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if err := notify("READY=1\nSTATUS=release " + cfg.Release); err != nil {
		log.Printf("notify: %v", err)
	}
	log.Printf("go-stdlib[%d] release %s: accepting on fd 3", pid, cfg.Release)
	sig := <-stop
	log.Printf("go-stdlib[%d] release %s: %v, draining", pid, cfg.Release, sig)
	// Stop accepting, finish what is in flight; below baton's --stop-timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}
