"""Public listeners: accept a client, learn who it is and where it wants to go, then hand it on.

For each accepted socket, in order: the PROXY protocol header when the peer is a trusted load balancer;
per-address admission (concurrency and rate); then, by listener kind, a peek at the first bytes: the
ClientHello's SNI (TLS is never terminated here, the bytes go through untouched), the HTTP Host header,
or nothing for raw TCP ports. The peeked bytes are kept and forwarded first. A refused client gets an
answer it understands (a TLS alert, an HTTP status line, or a close for raw TCP) and a reject reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mproxy import proxyproto
from mproxy.codec import NEED_MORE, Address, address_from_peername, sniff_http_host, sniff_sni
from mproxy.codec.errors import LocalProtocolError
from mproxy.config.edge import ListenerConfig
from mproxy.edge.limits import ClientLimiter, PendingClients

log = logging.getLogger("mproxy.edge")

READ_CHUNK = 64 * 1024
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# TLS alert records (TLS 1.0 record version, which every client accepts in an alert): fatal, then reason.
_ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x01\x00\x02\x02\x70"
_ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"
_ALERT_INTERNAL_ERROR = b"\x15\x03\x01\x00\x02\x02\x50"


@dataclass
class ClientRequest:
    """A client the listener has identified; whoever routes it owns `reader`/`writer` from then on."""

    addr: Address  # the real client (from the PROXY header when one was trusted)
    service: str  # https | http | tcp
    serviceport: int  # the public port, as frames carry it
    name: str  # SNI or Host ("" for raw TCP)
    initial: bytes  # bytes already read from the client, to be sent first
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    kind: str  # the listener kind: tls | http | tcp
    release: Callable[[], None] = lambda: None  # frees the client's admission; idempotent


class Refused(Exception):
    """A client cannot be served; `reason` is a short metric label, the message is for the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


Route = Callable[[ClientRequest], Awaitable[None]]
OnReject = Callable[[str, str], None]  # (listener kind, reason)


def refusal_bytes(kind: str, reason: str, message: str) -> bytes:
    """What a refused client is told, in its own protocol."""
    if kind == "tls":
        if reason in {"no_tunnel", "name_too_long", "no_name"}:
            return _ALERT_UNRECOGNIZED_NAME
        if reason in {"not_tls"}:
            return b""
        if reason in {"tunnel_failed", "backend_failed"}:
            return _ALERT_INTERNAL_ERROR
        return _ALERT_HANDSHAKE_FAILURE
    if kind == "http":
        status = {
            "no_tunnel": "502 Bad Gateway",
            "tunnel_full": "503 Service Unavailable",
            "tunnel_failed": "502 Bad Gateway",
            "backend_failed": "502 Bad Gateway",
            "draining": "503 Service Unavailable",
            "rate_limited": "429 Too Many Requests",
            "too_many_connections": "429 Too Many Requests",
            "too_many_clients": "503 Service Unavailable",
            "client_id_in_use": "503 Service Unavailable",
        }.get(reason, "400 Bad Request")
        body = (message + "\n").encode("utf-8", "replace")
        head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Mproxy-Reason: {reason}\r\n\r\n")
        return head.encode("ascii") + body
    return b""


class PublicListener:
    def __init__(
        self,
        config: ListenerConfig,
        *,
        route: Route,
        limiter: ClientLimiter,
        trusted: tuple[Network, ...] = (),
        sniff_timeout: float = 10.0,
        on_reject: OnReject | None = None,
        on_accept: Callable[[str], None] | None = None,
        pending: PendingClients | None = None,
        backlog: int = 4096,
    ) -> None:
        self.config = config
        self._route = route
        self._limiter = limiter
        self._trusted = trusted
        self._sniff_timeout = sniff_timeout
        self._backlog = backlog
        self._on_reject = on_reject
        self._on_accept = on_accept
        self._pending = pending if pending is not None else PendingClients(1_000_000)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0  # the bound port, once started

    @property
    def public_port(self) -> int:
        return self.config.public_port or self.port

    async def start(self) -> None:
        host, port = self.config.host_port
        try:
            self._server = await asyncio.start_server(self._on_client, host, port, limit=READ_CHUNK,
                                                      backlog=self._backlog)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for {self.config.kind} clients: "
                          f"{exc.strerror}; pick another port in listeners[].listen") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _is_trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._trusted)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind = self.config.kind
        original = writer.transport.get_protocol()
        released = True
        key = id(writer)
        self._pending.add(key, lambda: self._shed(writer))

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._limiter.release(addr.address)

        try:
            peer = writer.get_extra_info("peername")
            addr = address_from_peername(peer)
            buffered = b""
            deadline = asyncio.get_running_loop().time() + self._sniff_timeout
            if self.config.proxy_protocol and self._is_trusted(addr.address):
                addr, buffered = await self._read_proxy_header(reader, addr, deadline)
            reason = self._limiter.admit(addr.address)
            if reason is not None:
                raise Refused(reason, "too many connections from your address; try again later")
            released = False
            if self._on_accept is not None:
                self._on_accept(kind)
            name, buffered = await self._sniff(reader, buffered, deadline)
            request = ClientRequest(addr, self.config.service, self.public_port, name, buffered, reader,
                                    writer, kind, release)
            self._pending.discard(key)
            await self._route(request)
        except Refused as exc:
            await self._refuse(writer, exc)
        except (ConnectionError, asyncio.IncompleteReadError, LocalProtocolError) as exc:
            log.debug("client on %s listener went away early: %s", kind, exc)
        except Exception:  # a bug must cost this one client, not the listener
            log.exception("internal error while serving a %s client", kind)
            writer.transport.abort()
            release()
        finally:
            self._pending.discard(key)
            if writer.transport.get_protocol() is original:
                release()
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
            # else: routed; the bridge owns the socket and releases the admission when it ends

    def _shed(self, writer: asyncio.StreamWriter) -> None:
        log.debug("too many connections not yet routed; shedding the oldest on the %s listener",
                  self.config.kind)
        if self._on_reject is not None:
            self._on_reject(self.config.kind, "overloaded")
        writer.transport.abort()

    async def _read_more(self, reader: asyncio.StreamReader, buffered: bytes, reason: str,
                         deadline: float) -> bytes:
        # One deadline for the whole preamble: a client trickling a byte at a time gets no extra time.
        left = deadline - asyncio.get_running_loop().time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(reader.read(READ_CHUNK), left)
        except TimeoutError:
            raise Refused(reason, "timed out waiting for the first bytes") from None
        if not chunk:
            raise ConnectionResetError("client closed before sending enough to route it")
        return buffered + chunk

    async def _read_proxy_header(self, reader: asyncio.StreamReader, addr: Address,
                                 deadline: float) -> tuple[Address, bytes]:
        buffered = b""
        while True:
            try:
                header = proxyproto.decode(buffered)
            except proxyproto.ProxyProtocolError as exc:
                raise Refused("bad_proxy_header", f"bad PROXY protocol header: {exc}") from None
            if header is not proxyproto.NEED_MORE:
                break
            if len(buffered) > 4096:
                raise Refused("bad_proxy_header", "PROXY protocol header too long")
            buffered = await self._read_more(reader, buffered, "bad_proxy_header", deadline)
        assert isinstance(header, proxyproto.ProxyHeader)
        rest = buffered[header.length:]
        if header.source is None:  # LOCAL / UNKNOWN: the balancer's own connection (health check)
            return addr, rest
        host, port = header.source
        return address_from_peername((host, port)), rest

    async def _sniff(self, reader: asyncio.StreamReader, buffered: bytes,
                     deadline: float) -> tuple[str, bytes]:
        kind = self.config.kind
        if kind == "tcp":
            return "", buffered
        sniff = sniff_sni if kind == "tls" else sniff_http_host
        while True:
            result = sniff(buffered) if buffered else NEED_MORE
            if result is None:
                if kind == "tls":
                    if buffered[:1] != b"\x16":
                        raise Refused("not_tls", "this port only accepts TLS")
                    raise Refused("no_name", "the TLS ClientHello carries no server name (SNI)")
                raise Refused("no_name", "the request has no usable Host header")
            if result is not NEED_MORE:
                assert isinstance(result, str)
                return result, buffered
            buffered = await self._read_more(reader, buffered, "sniff_timeout", deadline)

    async def _refuse(self, writer: asyncio.StreamWriter, exc: Refused) -> None:
        kind = self.config.kind
        if self._on_reject is not None:
            self._on_reject(kind, exc.reason)
        log.info("refused a %s client: %s (%s)", kind, exc.reason, exc)
        payload = refusal_bytes(kind, exc.reason, str(exc))
        if payload and not writer.is_closing():
            with contextlib.suppress(ConnectionError, TimeoutError):
                writer.write(payload)
                await asyncio.wait_for(writer.drain(), 2.0)
