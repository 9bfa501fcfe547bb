"""The HTTP connections under KServe's REST server: uvicorn, whose settings KServe fixes (every
interface, no read timeout, no connection cap). ``install`` gives a KServe REST server:

- the address to listen on (``--host``);
- a read timeout: a request must arrive whole, head and body, within ``read_timeout_s`` of its
  first byte, or it is answered 408 and its connection closed. uvicorn alone lets a client send
  a header a byte a minute for ever (slowloris);
- a connection cap: past ``max_connections`` open, a new connection closes the one that has been
  idle longest (no request in progress), so clients holding idle connections cannot lock out
  the others, as uvicorn's ``limit_concurrency`` would (it answers 503 to all once it is full);
- no per-request log work unless asked (``log_requests``): no access-log record (uvicorn logs
  one whenever its logger has handlers, which KServe's logging gives it in every process), and
  KServe's ``TimingMiddleware`` (whose only output is two log lines a request: it names each
  request by matching every route again) not added;
- a drain: on the first SIGTERM the server goes on answering for ``drain_s`` with
  ``/v2/health/ready`` at 503, so a load balancer's probe sees it leave before the listener
  closes (Kubernetes keeps routing to a pod until its endpoints update); then uvicorn's graceful
  shutdown lets the requests in flight finish.
"""

import dataclasses
import functools
import json
import signal
import time

import uvicorn
from timing_asgi import TimingMiddleware
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn: h11 then, as uvicorn's "auto" picks
    HttpToolsProtocol = None

_DRAINING = []  # in this process: the monotonic time SIGTERM came


@dataclasses.dataclass(frozen=True)
class Limits:
    """The serve flags of the connection layer."""

    host: str = "0.0.0.0"
    read_timeout_s: float = 30.0
    max_connections: int = 1000
    drain_s: float = 0.0
    log_requests: bool = False


def draining():
    """Why this process is no longer ready (it is stopping), or None."""
    if not _DRAINING:
        return None
    return f"the server is shutting down (SIGTERM {time.monotonic() - _DRAINING[0]:.1f} s ago)"


def address(host, port):
    """``host``:``port`` as a socket address string (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _response(status, reason, message):
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class _Guarded:
    """uvicorn's HTTP protocol with the read timeout, the connection cap and the access log only
    if asked (``Limits`` is the uvicorn config's ``reszoo_limits``)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.limits = self.config.reszoo_limits
        self.access_log = self.access_log and self.limits.log_requests  # uvicorn reads only its logger's handlers
        self.read_timer, self.last_active = None, self.loop.time()
        self._expect_request()
        open_ = [c for c in self.connections if isinstance(c, _Guarded) and not c.transport.is_closing()]
        if len(open_) > self.limits.max_connections:
            idle = [c for c in open_ if c is not self and c.idle()]
            if idle:
                min(idle, key=lambda c: c.last_active).close()
            else:
                transport.write(_response(503, "Service Unavailable", f"the server holds its limit of "
                                          f"{self.limits.max_connections} connections, each with a request in "
                                          "progress (--max_connections)"))
                self.close()

    def connection_lost(self, exc):
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data):
        self.last_active = self.loop.time()
        if self.read_timer is None and self.idle():
            self._expect_request()
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:  # the request is in
            self._stop_timer()

    def on_response_complete(self):
        self.last_active = self.loop.time()
        super().on_response_complete()

    def idle(self):
        return self.cycle is None or self.cycle.response_complete

    def close(self):
        self._stop_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _expect_request(self):
        self.read_timer = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _stop_timer(self):
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self):
        self.read_timer = None
        if self.transport.is_closing():
            return
        if self.idle() or not self.cycle.response_started:
            self.transport.write(_response(408, "Request Timeout", f"the request did not arrive whole within "
                                           f"{self.limits.read_timeout_s:g} s of its first byte (--read_timeout_ms)"))
        self.close()


class GuardedH11(_Guarded, H11Protocol):
    pass


if HttpToolsProtocol is not None:
    class GuardedHttpTools(_Guarded, HttpToolsProtocol):
        pass


class Server(uvicorn.Server):
    """uvicorn's server, draining ``drain_s`` on the first SIGTERM before its graceful shutdown
    (a second SIGTERM, or SIGINT, stops at once)."""

    def __init__(self, config, drain_s):
        super().__init__(config)
        self.drain_s, self.drain_until = drain_s, None

    def handle_exit(self, sig, frame):
        if not _DRAINING:
            _DRAINING.append(time.monotonic())
        if sig == signal.SIGTERM and self.drain_s > 0 and self.drain_until is None:
            self.drain_until = time.monotonic() + self.drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter):
        if self.drain_until is not None and not self.should_exit and time.monotonic() >= self.drain_until:
            super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


def _without_timing(add_middlewares, app):
    add_middlewares(app)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]


def install(rest_server, limits):
    """``limits`` on KServe's ``RESTServer`` before it starts (in a ``--workers`` server, on the
    one its worker processes each run)."""
    config = rest_server.config
    config.host = limits.host
    if not limits.log_requests:
        rest_server._add_middlewares = functools.partial(_without_timing, rest_server._add_middlewares)
    config.http = GuardedHttpTools if HttpToolsProtocol is not None else GuardedH11
    config.reszoo_limits = limits
    rest_server._server = Server(config, limits.drain_s)
