"""uvicorn's h11 protocol, with a request that is already on its way served
instead of reset when the server shuts down.

uvicorn's Server.shutdown() closes its listeners and, in the same pass of
the event loop, closes every connection on which no request has been parsed
yet (Kludex/uvicorn#2757). A connection accepted just before the stop signal
whose request bytes are already in its socket buffer is then reset: under
baton that is a request lost on every few rollouts. This protocol gives such
a connection 50 ms to deliver its request first; a request that arrives is
served (keep-alive off), an idle connection is closed as before.

Use it with `uvicorn --http drain:H11DrainingProtocol` (drain.py on the
--app-dir path).
"""
from uvicorn.protocols.http.h11_impl import H11Protocol

GRACE_S = 0.05


class H11DrainingProtocol(H11Protocol):
    def shutdown(self) -> None:
        if self.cycle is None:
            self.loop.call_later(GRACE_S, super().shutdown)
        else:
            super().shutdown()
