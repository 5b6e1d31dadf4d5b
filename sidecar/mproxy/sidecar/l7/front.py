"""The HTTP routers at run time: serve the requests of streams routed to a router, proxy them to backends.

How a stream reaches a router. A stream route with `http: NAME` is handled by the ordinary BackendHandler
(mproxy.sidecar.backend): routing, early data, flow control both ways, the E_BUFFER rule, half-close and
the stream metrics all apply unchanged. Its "backend connection" is one end of a `socket.socketpair()`;
`L7Front.open` serves the other end with aiohttp's low-level `web.Server` (public API: a protocol factory,
here given to `loop.connect_accepted_socket`, with the router's SSLContext when it terminates TLS).

Why a socket pair rather than a loopback listener per router: nothing else in the pod can connect to a
socket pair, so there is no port to guard and no registry of accepted source ports to consult (a listener
would have to tell our connections from anyone else's, and a connection could be accepted before we know
it is ours); and the per-connection facts the handler needs (which router, the client's address, the
listener port) are bound into that connection's handler when it is made, not looked up. The cost is one
small `web.Server` object per stream (a few microseconds, nothing per request).

A request. The router's current CompiledRouter (a reload swaps it; a keep-alive connection routes its next
request with the new one) selects a rule; no rule is 404. A RequestRedirect is answered here; a rule with no
weighted backend is 500, a `status` backend answers its status; otherwise the request goes to the backend
through one shared aiohttp ClientSession (keep-alive pool, bounded in total and per backend), bodies
streamed both ways in chunks of at most CHUNK bytes (never read whole: aiohttp's stream readers pause the
socket past 2 x 64 KiB). Hop-by-hop headers are dropped both ways, X-Forwarded-For/-Proto/-Host added,
Host passed through unless URLRewrite sets a hostname. A backend that cannot be reached is 503, one that
breaks the exchange 502, a timeout 504, each with a one-line text body (never a traceback); once the
response head is out, a failure resets the client connection instead (so a truncated body is never taken
for a whole one). Request heads are bounded by aiohttp's limits (MAX_LINE, MAX_FIELD, MAX_HEADERS), requests
in progress per router by `maxConcurrentRequests` (past it: 503 at once). A WebSocket upgrade is
routed the same way, then relayed message by message between aiohttp's server and client WebSockets
(_relay), on a session of its own so long-lived sockets never hold the request pool's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import ssl
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from mproxy.config.errors import ConfigError
from mproxy.config.http_router import HttpRouterConfig, HttpTlsConfig
from mproxy.metrics.http import NO_ROUTE, HttpMetrics
from mproxy.sidecar.l7.filters import modify_headers, redirect_location, rewrite_path
from mproxy.sidecar.l7.match import CompiledRouter, Request, Selected, host_of, pick_backend
from mproxy.tunnel import Stream

__all__ = ["L7Front", "server_ssl_context"]

log = logging.getLogger("mproxy.sidecar.http")


class _ClientErrors(logging.Filter):
    """aiohttp's server logs a bad request (a malformed or oversize head, answered 400/431) at ERROR with a
    traceback; it is the client's mistake, so: one INFO line with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            record.msg, record.args = f"HTTP router: bad request from a client: {type(exc).__name__}: %s", (
                reason,)
            record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


client_log = logging.getLogger("mproxy.sidecar.http.client")
client_log.addFilter(_ClientErrors())

CHUNK = 64 * 1024
MAX_LINE = 8190  # request line
MAX_FIELD = 8190  # one header line
MAX_HEADERS = 128
KEEPALIVE_SECONDS = 120.0  # an idle client connection is closed after this
HANDSHAKE_SECONDS = 10.0
TLS_RECHECK_SECONDS = 5.0  # how often (at most) a router's certificate files are checked for a change
POOL_TOTAL = 1024  # backend connections of all routers together
POOL_PER_HOST = 256  # ... to one backend host:port
CONNECT_SECONDS = 5.0
WS_MAX_MESSAGE = 4 * 1024 * 1024  # a WebSocket message is read whole (aiohttp): bounded
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"))


def _end_to_end(headers: CIMultiDictProxy[str], *, drop: tuple[str, ...] = ()) -> CIMultiDict[str]:
    """`headers` without the hop-by-hop ones (RFC 9110 7.6.1: those named in Connection too)."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low not in HOP_BY_HOP and low not in named and low not in drop:
            out.add(name, value)
    return out


def _cert_names(cert_file: str) -> tuple[str, ...]:
    from cryptography import x509

    with open(cert_file, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return ()


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):  # a certificate wildcard covers exactly one label
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def server_ssl_context(tls: HttpTlsConfig, path: str) -> ssl.SSLContext:
    """A server context serving the first certificate, switching by SNI to the first one naming the
    requested host (an exact name before a wildcard). Raises ConfigError naming the certificate."""
    contexts: list[tuple[tuple[str, ...], ssl.SSLContext]] = []
    for i, cert in enumerate(tls.certificates):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            ctx.load_cert_chain(cert.cert_file, cert.key_file)
            names = _cert_names(cert.cert_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{path}.certificates[{i}]", f"cannot load {cert.cert_file} with "
                              f"{cert.key_file}: {exc}; check the files (PEM certificate chain, its key)"
                              ) from None
        contexts.append((names, ctx))
    default = contexts[0][1]

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if not server_name:
            return
        name = server_name.lower().rstrip(".")
        exact = next((c for names, c in contexts if name in names), None)
        chosen = exact or next((c for names, c in contexts if any(_name_matches(p, name) for p in names)),
                               None)
        if chosen is not None and chosen is not default:
            sslobj.context = chosen

    default.sni_callback = pick
    return default


def _stamp(tls: HttpTlsConfig) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a certificate or key file is replaced (a renewed Secret's symlink swap)."""
    out: list[tuple[int, int, int] | None] = []
    for cert in tls.certificates:
        for name in (cert.cert_file, cert.key_file):
            try:
                st = os.stat(name)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(slots=True)
class _Router:
    name: str
    config: HttpRouterConfig
    matcher: CompiledRouter
    ssl: ssl.SSLContext | None
    path: str  # httpRouters[i]: for errors
    stamp: tuple[tuple[int, int, int] | None, ...] = ()  # of the certificate files `ssl` was loaded from
    checked: float = 0.0  # monotonic time `stamp` was last compared with the files


@dataclass(frozen=True, slots=True)
class _Conn:
    """What a connection's handler knows of its stream."""

    router: str
    client: str  # the client's address, as the relay reported it
    port: int | None  # the port the client reached (the relay's serviceport)


class L7Front:
    """Every HTTP router of the sidecar (mproxy.sidecar.backend.HttpFront)."""

    def __init__(self, metrics: HttpMetrics) -> None:
        self.metrics = metrics
        self.routers: dict[str, _Router] = {}
        self.draining = False
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self.active: dict[str, int] = {}  # requests in progress by router name (across reloads)
        # The live connections' servers (a connection's handler holds its server until it is closed).
        self._servers: weakref.WeakSet[web.Server] = weakref.WeakSet()

    # -- config ------------------------------------------------------------------------------------

    def check(self, configs: tuple[HttpRouterConfig, ...]) -> None:
        """Raise ConfigError if `configs` would not build (a certificate that does not load)."""
        self._build(configs)

    def update(self, configs: tuple[HttpRouterConfig, ...]) -> None:
        """Build every router (certificates loaded, matchers compiled) and only then swap them in, so a
        failure (ConfigError) leaves the running routers as they were. A router whose TLS config did not
        change keeps its SSLContext."""
        new = self._build(configs)
        self.routers = new
        self.metrics.configure((r.name, r.matcher.route_names) for r in new.values())

    def _build(self, configs: tuple[HttpRouterConfig, ...]) -> dict[str, _Router]:
        new: dict[str, _Router] = {}
        now = time.monotonic()
        for i, cfg in enumerate(configs):
            old = self.routers.get(cfg.name)
            path = f"httpRouters[{i}]"
            router = _Router(cfg.name, cfg, CompiledRouter(cfg), None, path)
            if cfg.tls is None:
                pass
            elif old is not None and old.config.tls == cfg.tls and old.ssl is not None:
                router.ssl, router.stamp, router.checked = old.ssl, old.stamp, old.checked
            else:
                router.stamp = _stamp(cfg.tls)
                router.ssl, router.checked = server_ssl_context(cfg.tls, f"{path}.tls"), now
            new[cfg.name] = router
        return new

    def _current_ssl(self, rt: _Router) -> ssl.SSLContext | None:
        """The router's SSLContext, reloaded when its files changed (checked at most every
        TLS_RECHECK_SECONDS, on a new connection): a renewed certificate needs no config change."""
        tls = rt.config.tls
        now = time.monotonic()
        if rt.ssl is None or tls is None or now - rt.checked < TLS_RECHECK_SECONDS:
            return rt.ssl
        rt.checked = now
        stamp = _stamp(tls)
        if stamp != rt.stamp:
            rt.stamp = stamp
            try:
                rt.ssl = server_ssl_context(tls, f"{rt.path}.tls")
            except ConfigError as exc:  # half-written, or a bad renewal: keep serving the previous ones
                log.warning("HTTP router %s: its certificate files changed but do not load; keeping the "
                            "previous certificates: %s", rt.name, exc)
            else:
                log.info("HTTP router %s: certificate files changed, reloaded", rt.name)
        return rt.ssl

    def status(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "tls": r.ssl is not None, "routes": list(r.matcher.route_names),
                 "active": self.active.get(r.name, 0)} for r in self.routers.values()]

    # -- connections -------------------------------------------------------------------------------

    def open(self, router: str, stream: Stream) -> socket.socket:
        rt = self.routers.get(router)
        if rt is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"no HTTP router {router!r}")
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        try:
            port = int(stream.serviceport)
        except (TypeError, ValueError):
            port = None
        conn = _Conn(router, stream.addr.address, port)
        # handler_cancellation: a request whose client left is cancelled, releasing its backend connection
        server = web.Server(functools.partial(self._handle, conn), handler_cancellation=True,
                            logger=client_log, access_log=None,
                            keepalive_timeout=KEEPALIVE_SECONDS, max_line_size=MAX_LINE,
                            max_field_size=MAX_FIELD, max_headers=MAX_HEADERS, read_bufsize=CHUNK)
        self._servers.add(server)
        task = asyncio.get_running_loop().create_task(self._serve(server, theirs, self._current_ssl(rt)))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        return ours

    async def _serve(self, server: web.Server, sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(server, sock, ssl=ctx,
                                               ssl_handshake_timeout=HANDSHAKE_SECONDS if ctx else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a client that fails the handshake
            log.info("HTTP router: TLS handshake failed: %s", exc)
            sock.close()
        except asyncio.CancelledError:
            sock.close()
            raise

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=POOL_TOTAL, limit_per_host=POOL_PER_HOST,
                                             keepalive_timeout=30, ttl_dns_cache=10)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS),
                read_bufsize=CHUNK, trust_env=False, max_line_size=MAX_LINE, max_field_size=MAX_FIELD)
        return self._session

    async def drain(self, seconds: float) -> None:
        """Shutting down: from now on every response closes its connection, idle keep-alive connections
        are closed at once (so their streams end and do not hold the drain), and requests in progress
        get `seconds` to finish."""
        self.draining = True
        servers = list(self._servers)
        if servers:
            log.info("HTTP routers: closing %d client connections as their requests finish", len(servers))
        for srv in servers:
            srv.pre_shutdown()  # idle connections close now, busy ones after their request
        await asyncio.gather(*(srv.shutdown(seconds) for srv in servers), return_exceptions=True)

    def _websocket_session(self) -> aiohttp.ClientSession:
        """WebSockets get their own session: a long-lived one never holds a slot of the request pool (256
        of them to one backend would otherwise stall its requests); each is a client stream, bounded by
        the stream limits."""
        if self._ws_session is None or self._ws_session.closed:
            self._ws_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",), trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS))
        return self._ws_session

    async def close(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        for task in list(self._handshakes):
            with contextlib.suppress(BaseException):
                await task
        for session in (self._session, self._ws_session):
            if session is not None:
                await session.close()
        self._session = self._ws_session = None

    # -- requests ----------------------------------------------------------------------------------

    async def _handle(self, conn: _Conn, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.routers.get(conn.router)
        if rt is None:  # a reload removed the router under this keep-alive connection
            return self._text(request, 503, "this HTTP router is no longer configured", close=True)
        name = rt.name
        active = self.active.get(name, 0)
        if active >= rt.config.max_concurrent_requests:
            self.metrics.answered(name, NO_ROUTE, 503)
            return self._text(request, 503, f"too many requests in progress on HTTP router {name!r}")
        self.active[name] = active + 1
        self.metrics.active.labels(name).set(active + 1)
        try:
            return await self._route(rt, conn, request)
        except Exception:  # a bug: logged with its traceback, the client's connection reset
            log.exception("HTTP router %s: internal error serving %s %s", name, request.method,
                          request.raw_path[:200])
            self.metrics.answered(name, NO_ROUTE, 500)
            _reset(request)
            return web.Response(status=500)
        finally:
            left = self.active[name] = self.active[name] - 1
            if name in self.routers:
                self.metrics.active.labels(name).set(left)
            elif left == 0:  # a reload removed the router: forget it once its last request is done
                del self.active[name]

    def _text(self, request: web.BaseRequest, status: int, text: str, *, close: bool = False,
              headers: CIMultiDict[str] | None = None) -> web.Response:
        resp = web.Response(status=status, text=text + "\n", headers=headers)
        if close or self.draining:
            resp.force_close()
        return resp

    async def _route(self, rt: _Router, conn: _Conn, request: web.BaseRequest) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        headers = request.headers
        view = Request(
            host=host_of(headers.get("Host", "")),  # not request.host: without Host it asks getfqdn()
            method=request.method,
            path=raw_path,
            headers={k.lower(): ",".join(headers.getall(k)) for k in headers},
            query={k: request.query.getone(k) for k in request.query},
        )
        sel = rt.matcher.select(view)
        if sel is None:
            self.metrics.answered(rt.name, NO_ROUTE, 404)
            return self._text(request, 404, "no HTTP route matches this request")
        route = sel.rule.route
        redirect = sel.rule.redirect
        if redirect is not None:
            scheme = "https" if rt.ssl is not None else "http"
            location = redirect_location(redirect, scheme=scheme, host=view.host, port=conn.port,
                                         path=raw_path, query=raw_query, prefix=sel.prefix)
            out: CIMultiDict[str] = CIMultiDict(Location=location)
            if sel.rule.response_headers is not None:
                modify_headers(out, sel.rule.response_headers)
            self.metrics.answered(rt.name, route, redirect.status_code)
            return self._text(request, redirect.status_code, f"redirecting to {location}", headers=out)
        backend = pick_backend(sel.rule.backends)
        if backend is None or backend.host is None or backend.port is None:
            status = backend.status if backend is not None and backend.status else 500
            self.metrics.answered(rt.name, route, status)
            return self._text(request, status, f"HTTP route {route!r} has no usable backend for this request")
        ex = _Exchange(rt, conn, request, sel, backend.host, backend.port)
        try:
            # A WebSocket's timeouts bound its handshake, not the session (_proxy_ws).
            async with asyncio.timeout(None if _is_websocket(request) else sel.rule.timeout):
                return await self._proxy(ex, raw_path, raw_query)
        except TimeoutError:
            return self._failed(ex, 504, f"backend {ex.host}:{ex.port} did not answer within "
                                f"{sel.rule.timeout:g} s")

    async def _proxy(self, ex: _Exchange, raw_path: str, raw_query: str) -> web.StreamResponse:
        rt, conn, request, sel, host, port = ex.router, ex.conn, ex.request, ex.sel, ex.host, ex.port
        route = sel.rule.route
        out = _end_to_end(request.headers, drop=("expect",))
        rewrite = sel.rule.rewrite
        path = raw_path
        original_host = request.headers.get("Host")
        if rewrite is not None:
            path = rewrite_path(rewrite.path, raw_path, sel.prefix)
            if rewrite.hostname is not None:
                out["Host"] = rewrite.hostname
        if sel.rule.request_headers is not None:
            modify_headers(out, sel.rule.request_headers)
        forwarded = out.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{forwarded}, {conn.client}" if forwarded else conn.client
        out["X-Forwarded-Proto"] = "https" if rt.ssl is not None else "http"
        if original_host is not None:
            out["X-Forwarded-Host"] = original_host
        body: Any = None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = request.content
        url = URL.build(scheme="http", host=host, port=port, path=path, query_string=raw_query, encoded=True)
        try:
            if _is_websocket(request):
                return await self._proxy_ws(ex, url, out)
            async with self._client_session().request(
                request.method, url, headers=out, data=body, allow_redirects=False, compress=None,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            ) as up:
                self.metrics.duration.labels(rt.name).observe(time.monotonic() - ex.started)
                head = _end_to_end(up.headers)
                if sel.rule.response_headers is not None:
                    modify_headers(head, sel.rule.response_headers)
                resp = ex.response = web.StreamResponse(status=up.status, reason=up.reason, headers=head)
                if self.draining:
                    resp.force_close()
                await resp.prepare(request)
                self.metrics.answered(rt.name, route, up.status)
                async for chunk in up.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            if _client_gone(request):  # the client left: nothing to answer
                log.debug("HTTP client left during the exchange: %s", exc)
                return ex.response or web.Response(status=499)
            return self._failed(ex, 502, f"backend {host}:{port} reset the connection")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            why = exc.os_error.strerror if isinstance(exc, aiohttp.ClientConnectorError) else None
            return self._failed(ex, 503, f"backend {host}:{port} unreachable: {why or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            if _client_gone(request):
                return ex.response or web.Response(status=499)
            return self._failed(ex, 502, f"backend {host}:{port} failed: {type(exc).__name__}: "
                                f"{str(exc)[:200]}")

    async def _proxy_ws(self, ex: _Exchange, url: URL, headers: CIMultiDict[str]) -> web.StreamResponse:
        """A WebSocket upgrade: the handshake with the backend first (its answer to a refused upgrade is
        passed on), then messages both ways until either side closes (_relay). Messages are bounded at
        WS_MAX_MESSAGE; each send waits for the other side's transport."""
        request = ex.request
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                   if p.strip()]
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                     "Sec-WebSocket-Protocol"):
            headers.popall(name, None)  # ws_connect makes its own handshake
        try:
            async with asyncio.timeout(ex.sel.rule.timeout):
                up = await self._websocket_session().ws_connect(
                    url, headers=headers, protocols=offered, autoping=False, autoclose=False,
                    max_msg_size=WS_MAX_MESSAGE, compress=0)
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 502
            return self._failed(ex, status, f"backend {ex.host}:{ex.port} refused the WebSocket upgrade "
                                f"({exc.status} {exc.message})")
        async with up:
            ws = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), autoping=False,
                                       autoclose=False, max_msg_size=WS_MAX_MESSAGE, compress=False)
            ex.response = ws
            await ws.prepare(request)
            self.metrics.answered(ex.router.name, ex.sel.rule.route, 101)
            await _relay(ws, up)
        return ws

    def _failed(self, ex: _Exchange, status: int, text: str) -> web.StreamResponse:
        resp = ex.response
        if resp is not None and resp.prepared:  # counted already, with its real status
            log.info("HTTP router %s: %s after the response head; resetting the client", ex.router.name,
                     text)
            _reset(ex.request)
            return resp
        log.info("HTTP router %s: %s (answering %d)", ex.router.name, text, status)
        self.metrics.answered(ex.router.name, ex.sel.rule.route, status)
        return self._text(ex.request, status, text)


@dataclass(slots=True)
class _Exchange:
    """One proxied request; `response` once its head is being sent."""

    router: _Router
    conn: _Conn
    request: web.BaseRequest
    sel: Selected
    host: str
    port: int
    started: float = field(default_factory=time.monotonic)
    response: web.StreamResponse | None = None


def _is_websocket(request: web.BaseRequest) -> bool:
    h = request.headers
    return h.get("Upgrade", "").lower() == "websocket" and "upgrade" in {
        t.strip().lower() for t in h.get("Connection", "").split(",")}


_WS = aiohttp.WSMsgType
_WS_DONE = (_WS.CLOSE, _WS.CLOSING, _WS.CLOSED, _WS.ERROR)


_AnyWS = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(src: _AnyWS, dst: _AnyWS) -> tuple[int, bytes]:
    """Messages from `src` to `dst` (pings and pongs too: the ends keep their own liveness) until `src`
    closes; returns the code and reason of its close frame (1000 when it vanished without one)."""
    try:
        while True:
            msg = await src.receive()
            if msg.type == _WS.CLOSE:
                if isinstance(msg.data, int) and 1000 <= msg.data < 5000 and msg.data not in (1005, 1006):
                    return msg.data, str(msg.extra or "").encode()[:123]
                return 1000, b""
            if msg.type in _WS_DONE:
                return 1000, b""
            if msg.type == _WS.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == _WS.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == _WS.PING:
                await dst.ping(msg.data)
            elif msg.type == _WS.PONG:
                await dst.pong(msg.data)
    except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:  # the other side went away
        log.debug("WebSocket relay ended: %s", exc)
        return 1001, b""


async def _relay(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse) -> None:
    """Both ways until one side closes; its close code and reason are passed to the other side, then its
    own close frame is answered (neither end closes by itself: autoclose is off on both)."""
    ends: dict[asyncio.Future[tuple[int, bytes]], tuple[_AnyWS, _AnyWS]] = {
        asyncio.ensure_future(_pump(client, backend)): (client, backend),
        asyncio.ensure_future(_pump(backend, client)): (backend, client)}
    try:
        done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        code, reason = first.result()
        src, dst = ends[first]
    finally:
        for task in ends:
            task.cancel()
        for task in ends:
            with contextlib.suppress(BaseException):
                await task
    with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
        await dst.close(code=code, message=reason)
    with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
        await src.close(code=code)


def _client_gone(request: web.BaseRequest) -> bool:
    t = request.transport
    return t is None or t.is_closing()


def _reset(request: web.BaseRequest) -> None:
    t = request.transport
    if t is not None:
        t.abort()
