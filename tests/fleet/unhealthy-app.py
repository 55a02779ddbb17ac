#!/usr/bin/python3
"""A release for the fleet test bed that becomes ready everywhere but is
unhealthy on some hosts: it answers every request there with 503.

baton runs it as `unhealthy-app -c CONFIG`, the listening socket at fd 3;
CONFIG is JSON:

    {"release": "3.0", "unhealthy_on": ["fleet-2"]}

On the hosts named (by hostname) it answers `503 release 3.0 pid N:
unhealthy on fleet-2`; elsewhere `200 release 3.0 pid N`, like the example
app. It sends READY=1 to NOTIFY_SOCKET once it accepts, and on SIGTERM stops
accepting, finishes what is in flight and exits 0.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    args = sys.argv[1:]
    if len(args) != 2 or args[0] != "-c":
        sys.exit("usage: unhealthy-app -c CONFIG")
    with open(args[1]) as f:
        cfg = json.load(f)
    release = str(cfg.get("release", "unknown"))
    host = socket.gethostname()
    unhealthy = host in cfg.get("unhealthy_on", [])
    pid = os.getpid()
    if os.environ.get("LISTEN_PID") != str(pid) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("unhealthy-app: no listening socket (LISTEN_PID/LISTEN_FDS); run me under baton")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if unhealthy:
                code, body = 503, f"release {release} pid {pid}: unhealthy on {host}\n"
            else:
                code, body = 200, f"release {release} pid {pid}\n"
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def log_message(self, fmt, *a):
            pass

    server = ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)

    def stop(*_):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    notify = os.environ.get("NOTIFY_SOCKET", "")
    if notify:
        addr = "\0" + notify[1:] if notify.startswith("@") else notify
        state = f"READY=1\nSTATUS=release {release} {'unhealthy' if unhealthy else 'accepting'} on {host}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    print(f"unhealthy-app[{pid}] release {release} on {host}: {'unhealthy (503)' if unhealthy else 'healthy'}",
          file=sys.stderr, flush=True)
    server.serve_forever()
    # Waits for the requests in flight, closes this process's copy of the
    # socket (never shutdown(): baton and the other generation share it).
    server.server_close()


if __name__ == "__main__":
    main()
