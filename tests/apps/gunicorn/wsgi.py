"""The gunicorn app of the matrix (docs/apps.md): a WSGI callable.

GET / answers "release VERSION pid PID"; GET /slow?ms=N answers the same
after N ms. The release comes from APP_RELEASE, which the release's gunicorn
config file sets (raw_env).
"""
import os
import time
from urllib.parse import parse_qs

RELEASE = os.environ.get("APP_RELEASE", "unknown")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    pid = os.getpid()
    if path == "/":
        body = f"release {RELEASE} pid {pid}\n"
    elif path == "/slow":
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["1000"])[0])
        time.sleep(min(ms, 600_000) / 1000)
        body = f"release {RELEASE} pid {pid} slept {ms} ms\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
