"""The uvicorn app of the matrix (docs/apps.md): an ASGI callable.

GET / answers "release VERSION pid PID"; GET /slow?ms=N answers the same
after N ms. The release comes from the JSON config file named by APP_CONFIG
({"release": "1.0"}), read at import: a broken config fails the start.
"""
import asyncio
import json
import os
from urllib.parse import parse_qs

with open(os.environ["APP_CONFIG"], encoding="utf-8") as f:
    RELEASE = json.load(f)["release"]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    pid = os.getpid()
    path = scope["path"]
    status = 200
    if path == "/":
        body = f"release {RELEASE} pid {pid}\n"
    elif path == "/slow":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["1000"])[0])
        await asyncio.sleep(min(ms, 600_000) / 1000)
        body = f"release {RELEASE} pid {pid} slept {ms} ms\n"
    else:
        status, body = 404, "not found\n"
    data = body.encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"),
                    (b"content-length", str(len(data)).encode())],
    })
    await send({"type": "http.response.body", "body": data})
