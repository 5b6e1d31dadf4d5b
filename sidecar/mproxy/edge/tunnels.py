"""The tunnel endpoint: sidecars and devices dial in over WebSocket and each becomes a `TunnelSession`.

`TunnelEndpoint.app()` serves `tunnel.path`. An upgrade is refused while the edge drains (503), from a
sidecar that already holds its tunnels to this edge (409, E_DUPLICATE), past limits.maxTunnels (503,
E_LIMIT), when every token it presents is refused (401, E_AUTH; 403 when a token does not allow the
listener groups it asked for in `X-Mproxy-Listener-Groups`, 400 when that header is malformed; the reason
also in `X-Mproxy-Error`, which the sidecar reports). An accepted tunnel is the tunnel core's
Multiplexer run over the WebSocket by `run_tunnel` (heartbeats, dead-peer timeout), plus the telebit
control channel (`EdgeControl`) that turns tokens into a grant. The tunnel directory only ever holds what a
tunnel's tokens grant; a session leaves it the moment its tunnel ends, and the multiplexer then closes
every client stream it carried. Each tunnel's `TokenGuard` (mproxy.edge.expiry) is supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from mproxy.codec.errors import ErrorCode
from mproxy.config.edge import EdgeConfig
from mproxy.edge.control import EdgeControl, tokens_from_request
from mproxy.edge.expiry import TokenGuard
from mproxy.edge.table import TunnelDirectory
from mproxy.edge.udp import udp_clients
from mproxy.metrics.edge import EdgeMetrics
from mproxy.tunnel.identity import (
    ERROR_HEADER,
    GROUPS_HEADER,
    HAVE_HEADER,
    ID_HEADER,
    PEER_HEADER,
    PEER_SIDECAR,
    REPLICAS_HEADER,
    parse_groups,
    parse_have,
)
from mproxy.tunnel.mux import Multiplexer, MuxLimits
from mproxy.tunnel.supervisor import Supervised
from mproxy.tunnel.ws import CLOSE_POLICY, Heartbeat, run_tunnel

__all__ = ["TunnelEndpoint", "TunnelSession"]

log = logging.getLogger("mproxy.edge")

_ids = itertools.count(1)
CLOSE_WAIT = 3.0
# Tunnel ends that are the peer's fault or a bug: counted in tunnel_rejects and logged as a warning.
_COUNTED_CLOSES = ("protocol_error", "overflow", "internal_error")

Supervise = Callable[[str, str, Callable[[], Coroutine[Any, Any, None]]], Supervised]


class TunnelSession:
    """One connected tunnel (a sidecar or device WebSocket)."""

    def __init__(self, endpoint: TunnelEndpoint, remote: str, asked_groups: frozenset[str] | None = None
                 ) -> None:
        self.endpoint = endpoint
        self.id = next(_ids)
        self.remote = remote
        self.control = EdgeControl(endpoint.secret, asked_groups=asked_groups)
        self.mux: Multiplexer | None = None
        self.draining = False
        self.connected_at = time.time()
        self.stop = asyncio.Event()

    @property
    def active_streams(self) -> int:
        return len(self.mux.streams) if self.mux is not None else 0

    @property
    def listener_groups(self) -> frozenset[str] | None:
        """The listener groups whose clients this tunnel takes; None: every listener's."""
        return self.control.scope

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
            self.endpoint.metrics.tunnel_rejects.labels(reason).inc()
            log.warning("tunnel %d (%s): token refused: %s", self.id, self.remote, reason)
        if result.grant_changed:
            self.endpoint.regrant(self)

    def status(self) -> dict[str, Any]:
        grant = self.control.grant
        mux = self.mux
        return {
            "id": self.id,
            "remote": self.remote,
            "domains": sorted(grant.domains),
            "ports": sorted(grant.ports),
            "listenerGroups": None if self.listener_groups is None else sorted(self.listener_groups),
            # groups whose every client (any name or port) this tunnel takes, below specific grants
            "groupWide": sorted(self.endpoint.table.wide_groups(self)),
            "streams": self.active_streams,
            "draining": self.draining,
            "connectedSeconds": round(time.time() - self.connected_at, 1),
            "bytesSent": mux.bytes_sent if mux else 0,
            "bytesReceived": mux.bytes_received if mux else 0,
            "udpClients": udp_clients(mux) if mux else {},
        }


class TunnelEndpoint:
    def __init__(self, config: EdgeConfig, secret: bytes, metrics: EdgeMetrics,
                 table: TunnelDirectory[TunnelSession], *, edge_id: str, mux_limits: MuxLimits,
                 supervise: Supervise, unsupervise: Callable[[Supervised], None]) -> None:
        self.config = config
        self.secret = secret
        self.metrics = metrics
        self.table = table
        self.edge_id = edge_id
        self.identity = {ID_HEADER: edge_id, REPLICAS_HEADER: str(config.replicas)}
        self.mux_limits = mux_limits
        self._supervise = supervise  # run a guard under the relay's supervision ...
        self._unsupervise = unsupervise  # ... and forget it when its tunnel ends
        self.sessions: set[TunnelSession] = set()
        self.draining = False  # refuse new tunnels
        self.extra_routes: list[Callable[[web.Application], None]] = []  # e.g. the peers' grants endpoint
        self._tasks: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.config.tunnel.path, self.handle)
        for add in self.extra_routes:
            add(app)
        return app

    async def drain(self, deadline: float) -> None:
        """Route no new client to any tunnel; wait (until the loop time `deadline`) for their streams."""
        self.draining = True
        for session in list(self.sessions):
            session.draining = True
            if session.mux is not None:
                left = max(0.0, deadline - asyncio.get_running_loop().time())
                await session.mux.wait_idle(left)

    async def close(self) -> None:
        """Close every tunnel (1001 going away) and wait up to CLOSE_WAIT seconds for their handlers."""
        self.draining = True
        for session in list(self.sessions):
            session.stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_WAIT)

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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.json_response({"error": "the edge is shutting down; reconnect to another"}, status=503)
        remote = request.remote or "?"
        if self.edge_id in parse_have(request.headers.get(HAVE_HEADER)):
            # The sidecar already holds its tunnels to this edge (it dialled through a load balancer).
            self.metrics.tunnel_rejects.labels("duplicate_edge").inc()
            message = f"this sidecar already holds its tunnels to edge {self.edge_id}"
            return web.json_response({"error": message, "code": ErrorCode.DUPLICATE}, status=409,
                                     headers=self.identity)
        if len(self.sessions) >= self.config.limits.max_tunnels:
            self.metrics.tunnel_rejects.labels("too_many_tunnels").inc()
            return web.json_response({"error": f"this edge already holds {len(self.sessions)} tunnels "
                                      "(limits.maxTunnels); try another edge", "code": ErrorCode.LIMIT},
                                     status=503)
        try:
            asked = parse_groups(request.headers.get(GROUPS_HEADER))
        except ValueError as exc:
            self.metrics.tunnel_rejects.labels("bad_listener_groups").inc()
            return _refusal(400, f"{exc}; fix edge.listenerGroups", ErrorCode.BAD_COMMAND)
        session = TunnelSession(self, remote, asked)
        tokens = tokens_from_request(request.query_string, request.headers.get("Authorization"))
        refused = []
        for token in tokens:
            reason = session.control.add_token(token)
            if reason is not None:
                refused.append(reason)
                self.metrics.tunnel_rejects.labels(reason).inc()
        if tokens and session.control.grant.empty:
            groups = set(refused) == {"listener_groups_not_allowed"}
            why = session.control.refusal if len(refused) == 1 else (
                f"{', '.join(refused)} (the last: {session.control.refusal})")
            log.warning("tunnel from %s refused: %s", remote, why)
            return _refusal(403 if groups else 401, f"token refused: {why}", ErrorCode.AUTH)
        lim = self.config.limits
        ws = web.WebSocketResponse(autoping=False, compress=False,
                                   max_msg_size=max(4 << 20, 2 * lim.max_frame_bytes + 65536))
        ws.headers.update(self.identity)
        await ws.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        mux = Multiplexer(on_control=session.on_control, limits=self.mux_limits, name=f"tunnel {session.id}")
        mux.connection_ends_message = request.headers.get(PEER_HEADER) != PEER_SIDECAR  # telebit devices
        session.mux = mux
        self.sessions.add(session)
        self.metrics.tunnel_connects.inc()
        self.metrics.tunnels_connected.set(len(self.sessions))
        hb = self.config.heartbeat
        tokens_guard = TokenGuard(session.control, name=f"tunnel {session.id} from {remote}",
                                  auth_timeout=hb.auth_timeout_seconds, regrant=lambda: self.regrant(session),
                                  close=lambda message: self._close_policy(session, ws, message),
                                  count=lambda reason: self.metrics.tunnel_rejects.labels(reason).inc())
        guard = self._supervise(f"tunnel {session.id} guard", "tunnel_guard", tokens_guard.run)
        try:
            mux.send_control(EdgeControl.hello())
            self.regrant(session)
            result = await run_tunnel(ws, mux, heartbeat=Heartbeat(hb.interval_seconds, hb.timeout_seconds),
                                      stop=session.stop)
        finally:
            guard.task.cancel()
            self._unsupervise(guard)
            mux.close("the tunnel handler ended")  # no-op after run_tunnel; frees every client if not
            self._forget(session)
            self._tasks.discard(task)
        if result.reason in _COUNTED_CLOSES:
            self.metrics.tunnel_rejects.labels(result.reason).inc()
        level = logging.WARNING if result.reason in _COUNTED_CLOSES else logging.INFO
        log.log(level, "tunnel %d from %s closed: %s", session.id, remote, result)
        return ws

    async def _close_policy(self, session: TunnelSession, ws: web.WebSocketResponse, message: str) -> None:
        self.table.remove(session)
        if session.mux is not None:
            session.mux.close(message)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=CLOSE_POLICY, message=message.encode()[:120]), 2.0)


def _refusal(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status,
                             headers={ERROR_HEADER: message.encode("ascii", "replace").decode()[:300]})
