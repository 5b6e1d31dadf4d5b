"""The edge process: public listeners, the tunnel endpoint, /healthz /readyz /metrics /status, and the
choice of a tunnel for each client.

    relay = EdgeRelay(config, secret)
    await relay.start()          # listeners, tunnel endpoint, HTTP endpoints
    ...
    await relay.drain()          # SIGTERM: stop accepting, let streams finish (drainSeconds), close

Tunnels come in through `TunnelEndpoint` (mproxy.edge.tunnels), each one granted names and ports by its
tokens (mproxy.edge.expiry drops them as they expire). Public clients are `EdgeClient`s
(mproxy.edge.client); the relay is their `Router`: `open` picks a tunnel that grants the client's name or
port (the table: longest suffix first, least loaded) and opens its stream; `_unroutable` is where a
client that no tunnel here takes is refused, or (with `peers` configured) handed to a peer edge that holds
a tunnel for it (mproxy.edge.forward: `Forwarding`, then `forward`).

The bytes flusher and each tunnel's guard are supervised: one that fails is logged once, counted in
mproxy_edge_task_restarts_total{task}, and restarted with backoff; /readyz is 503 and /status lists it
while it waits for the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from mproxy.buffers import BufferRule
from mproxy.codec import LocalProtocolError, pack_connection
from mproxy.codec.errors import ErrorCode
from mproxy.config.edge import EdgeConfig
from mproxy.edge.client import EdgeClient, Tunnel
from mproxy.edge.forward import Peering
from mproxy.edge.limits import ClientLimiter, PendingClients
from mproxy.edge.listener import PublicListener
from mproxy.edge.refusal import Forwarding, Refused
from mproxy.edge.table import TunnelDirectory
from mproxy.edge.tunnels import TunnelEndpoint, TunnelSession
from mproxy.edge.udp import UdpListener
from mproxy.metrics.edge import EdgeMetrics
from mproxy.metrics.udp import UdpMetrics
from mproxy.tunnel.identity import REPLICAS_HEADER, default_edge_id
from mproxy.tunnel.mux import MuxLimits, Stream
from mproxy.tunnel.supervisor import Supervised

log = logging.getLogger("mproxy.edge")

MAX_ATTEMPTS = 3  # tunnels tried for one client when sidecars refuse it before answering
BYTES_FLUSH_SECONDS = 2.0

Task = Callable[[], Coroutine[Any, Any, None]]


class EdgeRelay:
    def __init__(self, config: EdgeConfig, secret: bytes, *, metrics: EdgeMetrics | None = None) -> None:
        self.config = config
        self.secret = secret
        self.metrics = metrics or EdgeMetrics()
        self.table: TunnelDirectory[TunnelSession] = TunnelDirectory()
        lim = config.limits
        self.limiter = ClientLimiter(max_open=lim.connections_per_client, rate=lim.connection_rate,
                                     burst=lim.connection_burst, ipv6_prefix=lim.ipv6_prefix_length)
        networks = config.trusted_networks
        self.pending = PendingClients(lim.pre_routing_connections)  # shared by every listener
        self.udp_metrics = UdpMetrics(self.metrics.registry, "edge", "port")
        self.listeners: list[PublicListener | UdpListener] = [
            UdpListener(item, table=self.table, limiter=self.limiter, metrics=self.udp_metrics)
            if item.kind == "udp" else
            PublicListener(item, router=self, limiter=self.limiter, trusted=networks,
                           sniff_timeout=lim.sniff_timeout_seconds, pending=self.pending,
                           backlog=lim.listen_backlog)
            for item in config.listeners
        ]
        self.draining = False
        self.started = False
        self.edge_id = config.id or default_edge_id()
        self.tunnel_port = 0
        self.http_port = 0
        self._runners: list[web.AppRunner] = []
        self._clients: set[EdgeClient] = set()  # relayed (a stream opened) and not finished
        self._flusher: asyncio.Future[None] | None = None
        self.supervised: set[Supervised] = set()  # the flusher and every tunnel's guard
        self.mux_limits = MuxLimits(
            max_streams=lim.streams_per_tunnel,
            max_streams_per_client=lim.connections_per_client,
            ipv6_prefix=lim.ipv6_prefix_length,
            idle_timeout=lim.idle_timeout_seconds,
            max_frame_bytes=lim.max_frame_bytes,
        )
        self.stream_buffer = lim.stream_buffer_bytes
        self.buffer_rule = BufferRule(soft=lim.buffer_soft_bytes, hard=lim.buffer_hard_bytes,
                                      grace=lim.buffer_grace_seconds, tunnel=lim.tunnel_buffer_bytes,
                                      allowance=lim.stream_buffer_bytes)
        self.tunnels = TunnelEndpoint(config, secret, self.metrics, self.table, edge_id=self.edge_id,
                                      mux_limits=self.mux_limits, supervise=self._supervise,
                                      unsupervise=self._unsupervise)
        self.sessions = self.tunnels.sessions  # every connected tunnel
        self.peering = Peering(self) if config.peers is not None else None  # mproxy.edge.forward
        if self.peering is not None:
            self.tunnels.extra_routes.append(self.peering.add_routes)  # the peers' grants endpoint

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        for listener in self.listeners:
            await listener.start()
        self.tunnel_port = await self._serve(self.tunnels.app(), self.config.tunnel.host_port,
                                             self._tunnel_ssl(), "tunnel.listen")
        self.http_port = await self._serve(self.http_app(), self.config.http.host_port, None, "http.listen")
        if self.peering is not None:
            await self.peering.start()
        self.started = True
        self._flusher = self._supervise("edge bytes flusher", "flusher", self._flush_loop).task
        log.info("edge ready: tunnel endpoint on port %d, listeners %s", self.tunnel_port,
                 ", ".join(f"{item.config.kind}:{item.port}" for item in self.listeners))

    def _supervise(self, name: str, kind: str, factory: Task) -> Supervised:
        sup = Supervised(name, kind, factory, on_crash=self._task_crashed, on_restart=self._count_down)
        self.supervised.add(sup)
        return sup

    def _unsupervise(self, sup: Supervised) -> None:
        self.supervised.discard(sup)
        self._count_down()

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
        from mproxy.ca import server_context

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
        self.draining = self.tunnels.draining = True
        self.metrics.draining.set(1)
        for listener in self.listeners:
            await listener.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.tunnels.drain(deadline)
        if self.peering is not None:  # clients it forwarded to peers finish too
            await self.peering.wait_idle(max(0.0, deadline - loop.time()))
        await self.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(BYTES_FLUSH_SECONDS)
            self.flush_bytes()

    def flush_bytes(self) -> None:
        """Count the bytes of long-lived clients as they flow, not only when they end."""
        for client in list(self._clients):
            delta_in, delta_out = client.uncounted()
            if delta_in or delta_out:
                self.metrics.add_bytes(client.service, client.label, delta_in, delta_out)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.draining = True
        await self.tunnels.close()
        for listener in self.listeners:
            await listener.close()
        if self.peering is not None:
            await self.peering.close()
        for client in list(self._clients):
            client.abort()  # their tunnels are gone; this frees the sockets now
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()

    # -- clients (mproxy.edge.client.Router) -----------------------------------------------------------

    def rejected(self, kind: str, reason: str) -> None:
        service = {"tls": "https", "http": "http"}.get(kind, "tcp")
        self.metrics.client_rejected(service, reason)

    def buffer_cut(self, limit: str) -> None:
        self.metrics.buffer_cut(limit)

    def _pick(self, client: EdgeClient) -> tuple[TunnelSession | None, bool, str]:
        """(tunnel, whether any tunnel serves this at all, metric name label)."""
        group = client.front.group
        if client.name:
            key, candidates = self.table.match_name(client.name, group)
            return self.table.pick_name(client.name, client.tried, group), bool(candidates), key or ""
        candidates = self.table.tunnels_for_port(client.serviceport, group)
        return self.table.pick_port(client.serviceport, client.tried, group), bool(candidates), ""

    def _check_header(self, client: EdgeClient) -> None:
        try:
            # Refuse here, before anything is sent: a header over 255 bytes would corrupt the tunnel. The
            # connection header is the longest this stream's frames get (a data header has the same
            # fields without servicename), so it is the only one checked.
            pack_connection(client.addr, service=client.service, serviceport=client.serviceport,
                            name=client.name)
        except LocalProtocolError:
            raise Refused("name_too_long", f"the name {client.name[:40]}... is too long for an M-PROXY "
                          "header (255 bytes with the client address)") from None

    def open(self, client: EdgeClient) -> Stream:
        """Called by an identified client (and again for a replay): pick a tunnel it has not tried,
        open its stream and return it. Raises Refused, before anything is sent, when nobody can take it.

        A sidecar that refuses the stream before answering anything (E_SHUTTING_DOWN while it drains,
        E_LIMIT) gets the client replayed onto another tunnel, so rolling restarts lose no client."""
        if not client.attempts:
            if self.draining:
                raise Refused("draining", "the edge is shutting down; retry shortly")
            self._check_header(client)
        clashed = False
        while client.attempts < MAX_ATTEMPTS:
            client.attempts += 1
            session, known, client.label = self._pick(client)
            if session is None:
                return self._unroutable(client, known, clashed)
            mux = session.mux
            assert mux is not None
            if not mux.can_open(client.addr.address):
                client.tried.add(id(session))
                continue
            if client.addr.client_id in mux.streams:
                # M-PROXY names a stream by family,address,port alone: one client port connected to two
                # public ports would name two streams alike on this tunnel.
                clashed = True
                client.tried.add(id(session))
                continue
            stream = mux.open_stream(client.addr, client.handler, service=client.service,
                                     serviceport=client.serviceport, name=client.name)
            client.tunnel = session
            if client not in self._clients:
                self._clients.add(client)
                self.metrics.client_active(client.service, 1)
            return stream
        what = client.name or f"port {client.serviceport}"
        raise Refused("tunnel_full", f"every tunnel for {what} refused the connection; retry later")

    def _unroutable(self, client: EdgeClient, known: bool, clashed: bool) -> Stream:
        """No tunnel here takes `client` (`known`: some tunnel grants it but none has room; `clashed`: its
        client id is in use on every one). The one place that decides so: it raises the Refused the client
        is told; a stream returned instead (from another way to serve it) is relayed like any other."""
        what = client.name or f"port {client.serviceport}"
        if clashed:
            raise Refused("client_id_in_use", f"your address and port already have a connection "
                          f"through every tunnel for {what}; connect from another port")
        if known:
            raise Refused("tunnel_full", f"every tunnel for {what} is at its stream limit or "
                          "draining; retry later")
        refusal = Refused("no_tunnel", f"no tunnel is connected for {what}")
        if self.peering is not None:
            self.peering.offer(client, refusal)  # raises Forwarding when a peer edge may take the client
        raise refusal

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        assert self.peering is not None  # only peering raises Forwarding
        self.peering.forward(client, signal)

    def refused(self, client: EdgeClient, tunnel: Tunnel, code: str) -> None:
        if code == ErrorCode.SHUTTING_DOWN:
            tunnel.draining = True  # it is going away: route nobody else to it
        log.info("tunnel %d refused a client (%s); retrying on another", tunnel.id, code)

    def done(self, client: EdgeClient, result: str) -> None:
        self._clients.discard(client)
        self.metrics.client_active(client.service, -1)
        if result != "rejected":
            delta_in, delta_out = client.uncounted()
            self.metrics.client_done(client.service, client.label, result, delta_in, delta_out,
                                     time.monotonic() - client.started)

    # -- observability ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "role": "edge",
            "id": self.edge_id,
            "replicas": int(self.tunnels.identity[REPLICAS_HEADER]),
            "draining": self.draining,
            "listeners": [_listener_status(item) for item in self.listeners],
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


def _listener_status(item: PublicListener | UdpListener) -> dict[str, Any]:
    """A listener's /status entry, with its group and TLS refusal mode where they apply."""
    config = item.config
    out = item.status() if isinstance(item, UdpListener) else {
        "kind": config.kind, "port": item.port, "publicPort": item.public_port}
    if config.group is not None:
        out["group"] = config.group
    if config.kind == "tls":
        out["tlsRefusal"] = config.tls_refusal
    return out
