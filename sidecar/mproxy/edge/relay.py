"""The edge relay: tunnels in over WebSocket, public clients out to them.

    relay = EdgeRelay(config, secret)
    await relay.start()          # listeners, tunnel endpoint, /healthz /readyz /metrics /status
    ...
    await relay.drain()          # SIGTERM: stop accepting, let streams finish (drainSeconds), close

Each tunnel is a `TunnelSession`: the tunnel core's Multiplexer run over the aiohttp WebSocket by
`run_tunnel` (heartbeats, dead-peer timeout), plus the telebit control channel (`EdgeControl`) that turns
tokens into a grant. The routing table only ever holds what a tunnel's tokens grant; a session leaves it
the moment its tunnel ends, and the multiplexer then closes every client socket it carried.

The bytes flusher and each tunnel's guard (token deadline and expiry) are supervised: one that fails is
logged once, counted in mproxy_edge_task_restarts_total{task}, and restarted with backoff; /readyz is 503
and /status lists it while it waits for the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from mproxy.buffers import BufferRule
from mproxy.codec import LocalProtocolError, pack_connection, pack_data_header
from mproxy.config.edge import EdgeConfig
from mproxy.edge.bridge import ClientBridge, take_over
from mproxy.edge.control import EdgeControl, tokens_from_request
from mproxy.edge.forward import Peering
from mproxy.edge.limits import ClientLimiter, PendingClients
from mproxy.edge.listener import ClientRequest, PublicListener, Refused, refusal_bytes
from mproxy.edge.table import RoutingTable
from mproxy.edge.udp import UdpListener
from mproxy.metrics.edge import EdgeMetrics
from mproxy.metrics.udp import UdpMetrics
from mproxy.tunnel.identity import HAVE_HEADER, ID_HEADER, REPLICAS_HEADER, default_edge_id, parse_have
from mproxy.tunnel.mux import Multiplexer, MuxLimits, Stream
from mproxy.tunnel.supervisor import Supervised
from mproxy.tunnel.ws import CLOSE_POLICY, Heartbeat, run_tunnel

log = logging.getLogger("mproxy.edge")

_ids = itertools.count(1)
MAX_ATTEMPTS = 3
BYTES_FLUSH_SECONDS = 2.0  # tunnels tried for one client when sidecars refuse it before answering
E_SHUTTING_DOWN = "E_SHUTTING_DOWN"
# Tunnel ends that are the peer's fault or a bug: counted in tunnel_rejects and logged as a warning.
_COUNTED_CLOSES = ("protocol_error", "overflow", "internal_error")


@dataclass(eq=False)
class _Relayed:
    """One client across its attempts (a replay moves it to another tunnel)."""

    req: ClientRequest
    started: float
    attempts: int = 0
    tried: set[int] = field(default_factory=set)
    label: str = ""
    initial: bytes | None = None  # None until a tunnel took it
    eof: bool = False
    bytes_in: int = 0  # client -> tunnel, over finished attempts
    bytes_out: int = 0  # tunnel -> client, over finished attempts
    counted_in: int = 0  # already added to the bytes counter
    counted_out: int = 0
    folded: bool = True  # the current stream's bytes are already in bytes_in/bytes_out

    def totals(self) -> tuple[int, int]:
        stream = self.stream
        if stream is None or self.folded:
            return self.bytes_in, self.bytes_out
        return self.bytes_in + stream.bytes_out, self.bytes_out + stream.bytes_in

    def uncounted(self) -> tuple[int, int]:
        """Bytes not yet in the counter, marked counted."""
        total_in, total_out = self.totals()
        delta = (max(0, total_in - self.counted_in), max(0, total_out - self.counted_out))
        self.counted_in, self.counted_out = max(total_in, self.counted_in), max(total_out, self.counted_out)
        return delta
    session: TunnelSession | None = None
    bridge: ClientBridge | None = None
    stream: Stream | None = None


class TunnelSession:
    """One connected tunnel (a sidecar or device WebSocket)."""

    def __init__(self, relay: EdgeRelay, remote: str) -> None:
        self.relay = relay
        self.id = next(_ids)
        self.remote = remote
        self.control = EdgeControl(relay.secret)
        self.mux: Multiplexer | None = None
        self.draining = False
        self.connected_at = time.time()
        self.stop = asyncio.Event()

    @property
    def active_streams(self) -> int:
        return len(self.mux.streams) if self.mux is not None else 0

    @property
    def accepting(self) -> bool:
        mux = self.mux
        return (mux is not None and not mux.closed and not self.draining
                and len(mux.streams) < mux.limits.max_streams)

    def on_control(self, value: object) -> None:
        result = self.control.handle(value)
        assert self.mux is not None
        for message in result.replies:
            self.mux.send_control(message)
        for reason in result.rejected:
            self.relay.metrics.tunnel_rejects.labels(reason).inc()
            log.warning("tunnel %d (%s): token refused: %s", self.id, self.remote, reason)
        if result.grant_changed:
            self.relay.regrant(self)

    def status(self) -> dict[str, Any]:
        grant = self.control.grant
        mux = self.mux
        return {
            "id": self.id,
            "remote": self.remote,
            "domains": sorted(grant.domains),
            "ports": sorted(grant.ports),
            "streams": self.active_streams,
            "draining": self.draining,
            "connectedSeconds": round(time.time() - self.connected_at, 1),
            "bytesSent": mux.bytes_sent if mux else 0,
            "bytesReceived": mux.bytes_received if mux else 0,
        }


class EdgeRelay:
    def __init__(self, config: EdgeConfig, secret: bytes, *, metrics: EdgeMetrics | None = None) -> None:
        self.config = config
        self.secret = secret
        self.metrics = metrics or EdgeMetrics()
        self.table: RoutingTable[TunnelSession] = RoutingTable()
        self.sessions: set[TunnelSession] = set()
        lim = config.limits
        self.limiter = ClientLimiter(max_open=lim.connections_per_client, rate=lim.connection_rate,
                                     burst=lim.connection_burst, ipv6_prefix=lim.ipv6_prefix_length)
        networks = config.trusted_networks
        self.pending = PendingClients(lim.pre_routing_connections)  # shared by every listener
        self.udp_metrics = UdpMetrics(self.metrics.registry, "edge", "port")
        self.listeners: list[PublicListener | UdpListener] = [
            UdpListener(item, table=self.table, limiter=self.limiter, metrics=self.udp_metrics)
            if item.kind == "udp" else
            PublicListener(item, route=self.route, limiter=self.limiter, trusted=networks,
                           sniff_timeout=lim.sniff_timeout_seconds, on_reject=self._on_reject,
                           pending=self.pending, backlog=lim.listen_backlog)
            for item in config.listeners
        ]
        self.draining = False
        self.started = False
        self.edge_id = config.id or default_edge_id()
        self.identity = {ID_HEADER: self.edge_id, REPLICAS_HEADER: str(config.replicas)}
        self.tunnel_port = 0
        self.http_port = 0
        self._runners: list[web.AppRunner] = []
        self._tunnel_tasks: set[asyncio.Task[Any]] = set()
        self._relayed: set[_Relayed] = set()
        self._flusher: asyncio.Future[None] | None = None
        self.supervised: set[Supervised] = set()  # the flusher and every tunnel's guard
        self.mux_limits = MuxLimits(
            max_streams=lim.streams_per_tunnel,
            max_streams_per_client=lim.connections_per_client,
            ipv6_prefix=lim.ipv6_prefix_length,
            idle_timeout=lim.idle_timeout_seconds,
            max_frame_bytes=lim.max_frame_bytes,
        )
        self._check_frame = min(self.mux_limits.frame_size, lim.max_frame_bytes)
        self.buffer_rule = BufferRule(soft=lim.buffer_soft_bytes, hard=lim.buffer_hard_bytes,
                                      grace=lim.buffer_grace_seconds, tunnel=lim.tunnel_buffer_bytes,
                                      allowance=lim.stream_buffer_bytes)
        self.peering = Peering(self) if config.peers is not None else None  # mproxy.edge.forward

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        for listener in self.listeners:
            await listener.start()
        self.tunnel_port = await self._serve(self.tunnel_app(), self.config.tunnel.host_port,
                                             self._tunnel_ssl(), "tunnel.listen")
        self.http_port = await self._serve(self.http_app(), self.config.http.host_port, None, "http.listen")
        if self.peering is not None:
            await self.peering.start()
        self.started = True
        self._flusher = self._supervise("edge bytes flusher", "flusher", self._flush_loop).task
        log.info("edge ready: tunnel endpoint on port %d, listeners %s", self.tunnel_port,
                 ", ".join(f"{item.config.kind}:{item.port}" for item in self.listeners))

    def _supervise(self, name: str, kind: str, factory: Any) -> Supervised:
        sup = Supervised(name, kind, factory, on_crash=self._task_crashed, on_restart=self._count_down)
        self.supervised.add(sup)
        return sup

    def _task_crashed(self, sup: Supervised) -> None:
        self.metrics.task_restarts.labels(sup.kind).inc()
        self._count_down()

    def _count_down(self, _: Supervised | None = None) -> None:
        down: dict[str, int] = {}
        for sup in self.supervised:
            down[sup.kind] = down.get(sup.kind, 0) + int(sup.down)
        for kind, n in down.items():
            self.metrics.tasks_down.labels(kind).set(n)

    def _tunnel_ssl(self) -> ssl.SSLContext | None:
        tunnel = self.config.tunnel
        if tunnel.cert_file is None or tunnel.key_file is None:
            return None
        from mproxy.tls import server_context

        return server_context(tunnel.cert_file, tunnel.key_file)

    async def _serve(self, app: web.Application, host_port: tuple[str, int], ctx: ssl.SSLContext | None,
                     field: str) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host_port[0], host_port[1], ssl_context=ctx,
                           backlog=self.config.limits.listen_backlog)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host_port[0]}:{host_port[1]} ({field}): "
                          f"{exc.strerror}") from None
        port: int = runner.addresses[0][1]  # this runner's one site (asyncio's or uvloop's server)
        return port

    async def drain(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new clients and tunnels, let open streams finish (up to `grace`
        seconds, default drainSeconds), then close everything."""
        timeout = self.config.drain_seconds if grace is None else grace
        self.draining = True
        self.metrics.draining.set(1)
        for listener in self.listeners:
            await listener.stop_accepting()
        deadline = asyncio.get_running_loop().time() + timeout
        for session in list(self.sessions):
            session.draining = True
            if session.mux is not None:
                left = max(0.0, deadline - asyncio.get_running_loop().time())
                await session.mux.wait_idle(left)
        if self.peering is not None:  # clients it forwarded to peers finish too
            await self.peering.wait_idle(max(0.0, deadline - asyncio.get_running_loop().time()))
        await self.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(BYTES_FLUSH_SECONDS)
            self.flush_bytes()

    def flush_bytes(self) -> None:
        """Count the bytes of long-lived clients as they flow, not only when they end."""
        for rel in list(self._relayed):
            delta_in, delta_out = rel.uncounted()
            if delta_in or delta_out:
                self.metrics.add_bytes(rel.req.service, rel.label, delta_in, delta_out)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.draining = True
        for session in list(self.sessions):
            session.stop.set()
        if self._tunnel_tasks:
            await asyncio.wait(self._tunnel_tasks, timeout=3.0)
        for listener in self.listeners:
            await listener.close()
        if self.peering is not None:
            await self.peering.close()
        for rel in list(self._relayed):
            rel.req.writer.transport.abort()  # their tunnels are gone; this frees the sockets now
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()

    # -- clients ------------------------------------------------------------------------------------

    def _on_reject(self, kind: str, reason: str) -> None:
        service = {"tls": "https", "http": "http"}.get(kind, "tcp")
        self.metrics.client_rejected(service, reason)

    def _pick(self, req: ClientRequest, exclude: set[int]) -> tuple[TunnelSession | None, bool, str]:
        """(tunnel, whether any tunnel serves this at all, metric name label)."""
        if req.name:
            key, candidates = self.table.match_name(req.name)
            return self.table.pick_name(req.name, exclude), bool(candidates), key or ""
        candidates = self.table.tunnels_for_port(req.serviceport)
        return self.table.pick_port(req.serviceport, exclude), bool(candidates), ""

    def _check_header(self, req: ClientRequest) -> None:
        try:
            # Refuse here, before anything is sent: a header over 255 bytes would corrupt the tunnel.
            pack_connection(req.addr, service=req.service, serviceport=req.serviceport, name=req.name)
            pack_data_header(req.addr, self._check_frame, service=req.service, serviceport=req.serviceport,
                             name=req.name)
        except LocalProtocolError:
            raise Refused("name_too_long", f"the name {req.name[:40]}... is too long for an M-PROXY "
                          "header (255 bytes with the client address)") from None

    async def route(self, req: ClientRequest) -> None:
        """Called by a public listener: a local tunnel takes the client, else (peers configured) a peer
        edge that holds a tunnel for it; raises Refused when neither can."""
        try:
            await self.route_here(req)
        except Refused as refusal:
            if self.peering is None:
                raise
            await self.peering.forward(req, refusal)  # raises `refusal` when no peer takes it

    async def route_here(self, req: ClientRequest) -> None:
        """Local tunnels only (the forward listener calls this: a forwarded client never hops again).
        Pick a tunnel, open a stream, hand the
        socket to a bridge and return at once (no task per relayed client; the bridge's callbacks
        finish the accounting). Raises Refused, before touching the socket, when nobody can take it.

        A sidecar that refuses the stream before answering anything (E_SHUTTING_DOWN while it drains,
        E_LIMIT) gets the client replayed onto another tunnel, so rolling restarts lose no client."""
        if self.draining:
            raise Refused("draining", "the edge is shutting down; retry shortly")
        self._check_header(req)
        self._attempt(_Relayed(req, time.monotonic()))

    def _attempt(self, rel: _Relayed) -> None:
        """Put `rel` on a tunnel; raises Refused when no tunnel (left) can take it."""
        req = rel.req
        what = req.name or f"port {req.serviceport}"
        clashed = False
        while rel.attempts < MAX_ATTEMPTS:
            rel.attempts += 1
            session, known, rel.label = self._pick(req, rel.tried)
            if session is None:
                if clashed:
                    raise Refused("client_id_in_use", f"your address and port already have a connection "
                                  f"through every tunnel for {what}; connect from another port")
                if known:
                    raise Refused("tunnel_full", f"every tunnel for {what} is at its stream limit or "
                                  "draining; retry later")
                raise Refused("no_tunnel", f"no tunnel is connected for {what}")
            mux = session.mux
            assert mux is not None
            if not mux.can_open(req.addr.address):
                rel.tried.add(id(session))
                continue
            if req.addr.client_id in mux.streams:
                # M-PROXY names a stream by family,address,port alone: one client port connected to two
                # public ports would name two streams alike on this tunnel.
                clashed = True
                rel.tried.add(id(session))
                continue
            if rel.initial is None:  # first tunnel: the bridge takes the socket over from here on
                rest, rel.eof = take_over(req.reader)
                rel.initial = req.initial + rest
                self.metrics.client_active(req.service, 1)
                self._relayed.add(rel)
            # An asyncio transport or uvloop's (not an asyncio.Transport subclass, same interface).
            transport = cast(asyncio.Transport, req.writer.transport)
            bridge = ClientBridge(transport, high_water=self.config.limits.stream_buffer_bytes, kind=req.kind,
                                  rule=self.buffer_rule, on_cut=self.metrics.buffer_cut)
            stream = mux.open_stream(req.addr, bridge.handler, service=req.service,
                                     serviceport=req.serviceport, name=req.name)
            rel.session, rel.bridge, rel.stream = session, bridge, stream
            rel.folded = False
            bridge.done.add_done_callback(lambda _: self._attempt_done(rel))
            bridge.attach(stream, rel.initial, rel.eof)
            return
        raise Refused("tunnel_full", f"every tunnel for {what} refused the connection; retry later")

    def _attempt_done(self, rel: _Relayed) -> None:
        req, bridge, stream, session = rel.req, rel.bridge, rel.stream, rel.session
        assert bridge is not None and stream is not None and session is not None
        transport = req.writer.transport
        result = "error"
        try:
            rel.bytes_in += stream.bytes_out
            rel.bytes_out += stream.bytes_in
            rel.folded = True
            if bridge.retry and not transport.is_closing():
                # The sidecar refused before saying anything: try another tunnel with the same bytes.
                rel.tried.add(id(session))
                code = bridge.peer_error[1] if bridge.peer_error else "tunnel closed"
                if code == E_SHUTTING_DOWN:
                    session.draining = True  # it is going away: route nobody else to it
                log.info("tunnel %d refused a client (%s); retrying on another", session.id, code)
                rel.initial, rel.eof = bytes(bridge.sent or b""), bridge.client_ended
                try:
                    self._attempt(rel)
                    return
                except Refused as exc:
                    # Nothing reached the client yet: it can still be told in its own protocol.
                    transport.write(refusal_bytes(req.kind, exc.reason, str(exc)))
                    transport.close()
                    self._on_reject(req.kind, exc.reason)
                    result = "rejected"
            elif bridge.close_reason is None:
                result = "ok"
            elif bridge.close_reason.startswith("tunnel closed"):
                result = "tunnel_closed"
        except Exception:  # a bug must cost this one client only
            log.exception("internal error while finishing a client")
            transport.abort()
        self._relayed.discard(rel)
        self.metrics.client_active(req.service, -1)
        if result != "rejected":
            delta_in, delta_out = rel.uncounted()
            self.metrics.client_done(req.service, rel.label, result, delta_in, delta_out,
                                     time.monotonic() - rel.started)
        req.release()

    # -- tunnels ------------------------------------------------------------------------------------

    def regrant(self, session: TunnelSession) -> None:
        if session.mux is None or session.mux.closed:
            return
        self.table.set_grant(session, session.control.grant)
        self.metrics.set_tunnel_names(self.table.names())

    def _forget(self, session: TunnelSession) -> None:
        self.table.remove(session)
        self.sessions.discard(session)
        self.metrics.set_tunnel_names(self.table.names())
        self.metrics.tunnels_connected.set(len(self.sessions))

    def tunnel_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.config.tunnel.path, self.handle_tunnel)
        if self.peering is not None:
            self.peering.add_routes(app)  # the peers' grants endpoint
        return app

    async def handle_tunnel(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.json_response({"error": "the edge is shutting down; reconnect to another"}, status=503)
        remote = request.remote or "?"
        if self.edge_id in parse_have(request.headers.get(HAVE_HEADER)):
            # The sidecar already holds its tunnels to this edge (it dialled through a load balancer).
            self.metrics.tunnel_rejects.labels("duplicate_edge").inc()
            message = f"this sidecar already holds its tunnels to edge {self.edge_id}"
            return web.json_response({"error": message, "code": "E_DUPLICATE"}, status=409,
                                     headers=self.identity)
        if len(self.sessions) >= self.config.limits.max_tunnels:
            self.metrics.tunnel_rejects.labels("too_many_tunnels").inc()
            return web.json_response({"error": f"this edge already holds {len(self.sessions)} tunnels "
                                      "(limits.maxTunnels); try another edge", "code": "E_LIMIT"}, status=503)
        session = TunnelSession(self, remote)
        tokens = tokens_from_request(request.query_string, request.headers.get("Authorization"))
        refused = []
        for token in tokens:
            reason = session.control.add_token(token)
            if reason is not None:
                refused.append(reason)
                self.metrics.tunnel_rejects.labels(reason).inc()
        if tokens and session.control.grant.empty:
            log.warning("tunnel from %s refused: %s", remote, ", ".join(refused))
            return web.json_response(
                {"error": f"token refused: {', '.join(refused)}", "code": "E_AUTH"}, status=401
            )
        lim = self.config.limits
        ws = web.WebSocketResponse(autoping=False, compress=False,
                                   max_msg_size=max(4 << 20, 2 * lim.max_frame_bytes + 65536))
        ws.headers.update(self.identity)
        await ws.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._tunnel_tasks.add(task)
        mux = Multiplexer(on_control=session.on_control, limits=self.mux_limits, name=f"tunnel {session.id}")
        session.mux = mux
        self.sessions.add(session)
        self.metrics.tunnel_connects.inc()
        self.metrics.tunnels_connected.set(len(self.sessions))
        hb = self.config.heartbeat
        guard = self._supervise(f"tunnel {session.id} guard", "tunnel_guard",
                                lambda: self._guard(session, ws))
        try:
            mux.send_control(EdgeControl.hello())
            self.regrant(session)
            result = await run_tunnel(ws, mux, heartbeat=Heartbeat(hb.interval_seconds, hb.timeout_seconds),
                                      stop=session.stop)
        finally:
            guard.task.cancel()
            self.supervised.discard(guard)
            self._count_down()
            mux.close("the tunnel handler ended")  # no-op after run_tunnel; frees every client if not
            self._forget(session)
            self._tunnel_tasks.discard(task)
        if result.reason in _COUNTED_CLOSES:
            self.metrics.tunnel_rejects.labels(result.reason).inc()
        level = logging.WARNING if result.reason in _COUNTED_CLOSES else logging.INFO
        log.log(level, "tunnel %d from %s closed: %s", session.id, remote, result)
        return ws

    async def _guard(self, session: TunnelSession, ws: web.WebSocketResponse) -> None:
        """Close a tunnel that presents no valid token in time, and drop tokens as they expire."""
        hb = self.config.heartbeat
        await asyncio.sleep(hb.auth_timeout_seconds)
        if session.control.grant.empty:
            self.metrics.tunnel_rejects.labels("no_token").inc()
            log.warning("tunnel %d from %s sent no valid token within %g s; closing", session.id,
                        session.remote, hb.auth_timeout_seconds)
            await self._close_policy(session, ws, "no valid token; send add_token or ?access_token=")
            return
        while True:
            await asyncio.sleep(1.0)
            if session.control.expire():
                self.regrant(session)
                if not session.control.has_grant():
                    self.metrics.tunnel_rejects.labels("expired").inc()
                    await self._close_policy(session, ws, "every token of this tunnel has expired")
                    return

    async def _close_policy(self, session: TunnelSession, ws: web.WebSocketResponse, message: str) -> None:
        self.table.remove(session)
        if session.mux is not None:
            session.mux.close(message)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=CLOSE_POLICY, message=message.encode()[:120]), 2.0)

    # -- observability ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "role": "edge",
            "id": self.edge_id,
            "replicas": self.config.replicas,
            "draining": self.draining,
            "listeners": [{"kind": item.config.kind, "port": item.port, "publicPort": item.public_port}
                          for item in self.listeners],
            "tunnelPort": self.tunnel_port,
            "names": self.table.names(),
            "ports": {str(k): v for k, v in self.table.ports().items()},
            "tunnels": [s.status() for s in sorted(self.sessions, key=lambda s: s.id)],
            "tasksDown": sorted(f"{sup.name}: {sup.error}" for sup in self.supervised if sup.down),
        } | ({"peering": self.peering.status()} if self.peering is not None else {})

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        failed = [f"{sup.name} failed ({sup.error}), restarting" for sup in self.supervised if sup.down]
        if failed:
            return False, "; ".join(sorted(failed))
        return True, "ok"

    def http_app(self) -> web.Application:
        from mproxy.observe.http import build_app

        return build_app(self.metrics.registry, self.ready, self.status)
