"""One tunnel connection slot of the sidecar: dial the edge, hold the tunnel, reconnect with backoff.

Each slot dials one edge URL over WebSocket (plain ws for tests, wss with an optional CA bundle), presents
the token (Authorization: Bearer, ?access_token=, or the telebit `add_token` command after the relay's
hello), then runs a Multiplexer that accepts streams until the tunnel ends. It then waits a full-jitter
backoff delay (short ones for a few seconds after an established tunnel was lost) and dials again; DNS is
resolved again on every attempt (no DNS cache).

The slot's task is supervised (mproxy.tunnel.supervisor): should it ever raise, the error is logged once,
the slot shows state "failed" with the error in /status (and so is not connected for /readyz), its
multiplexer is closed, `on_crash` counts it, and the loop is restarted after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from mproxy.codec import Hello, reply
from mproxy.observe.logs import redact_url
from mproxy.sidecar.discovery import PinnedResolver
from mproxy.tunnel import (
    Backoff,
    CommandError,
    ControlChannel,
    Heartbeat,
    Multiplexer,
    MuxLimits,
    Stream,
    StreamHandler,
    run_tunnel,
)
from mproxy.tunnel.identity import (
    ERROR_HEADER,
    GROUPS_HEADER,
    HAVE_HEADER,
    PEER_HEADER,
    PEER_SIDECAR,
    groups_value,
    have_value,
    parse_announced,
)
from mproxy.tunnel.sockbuf import auto_send_buffer, set_send_buffer, tcp_rtt_seconds
from mproxy.tunnel.supervisor import Supervised

if TYPE_CHECKING:
    from mproxy.config.sidecar import SidecarConfig
    from mproxy.sidecar.edges import EdgePool

__all__ = ["TunnelClient", "mux_limits", "read_token"]

log = logging.getLogger("mproxy.sidecar.tunnel")

STABLE_SECONDS = 10.0  # a tunnel that lived this long resets the backoff
DIAL_TIMEOUT = 15.0
LOCK_WAIT = 2.0  # longest a dial waits for another slot of its pool to finish dialling


def read_token(cfg: SidecarConfig) -> str | None:
    """The token, read fresh on every dial (Secrets rotate): edge.tokenFile, else $MPROXY_TOKEN."""
    path = cfg.edge.token_file
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError as exc:
            log.error("cannot read edge.tokenFile %s: %s", path, exc.strerror or exc)
            return None
    return os.environ.get("MPROXY_TOKEN") or None


def mux_limits(cfg: SidecarConfig) -> MuxLimits:
    lim = cfg.limits
    frame = min(64 * 1024, lim.max_frame_bytes)
    return MuxLimits(
        max_streams=lim.max_streams_per_tunnel,
        max_streams_per_client=lim.max_streams_per_client,
        ipv6_prefix=lim.ipv6_prefix_length,
        idle_timeout=lim.idle_timeout_seconds,
        max_frame_bytes=lim.max_frame_bytes,
        frame_size=frame,
        batch_size=64 * 1024,  # one frame per WebSocket message: see MuxLimits.batch_size
        high_water=lim.stream_buffer_bytes,
        low_water=lim.stream_buffer_bytes // 4,
    )


async def _tune_send_buffer(sock: socket.socket, every: float = 2.0) -> None:
    """limits.tunnelSendBufferBytes: auto. Re-size the send buffer from the measured RTT."""
    current = 0
    while True:
        size = auto_send_buffer(tcp_rtt_seconds(sock))
        if abs(size - current) > current // 4 and set_send_buffer(sock, size):
            current = size
        await asyncio.sleep(every)


def _with_query_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode({"access_token": token})
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, parts.fragment))


class TunnelClient:
    def __init__(
        self,
        url: str,
        index: int,
        get_config: Callable[[], SidecarConfig],
        accept: Callable[[Stream, TunnelClient], StreamHandler],
        on_state: Callable[[TunnelClient], None] | None = None,
        on_crash: Callable[[Supervised], None] | None = None,
        on_restart: Callable[[Supervised], None] | None = None,
        pool: EdgePool | None = None,
    ) -> None:
        self.url = url
        self.pool = pool
        self.address: str | None = None  # the address dialled (None: aiohttp resolves the hostname)
        self.edge_id: str | None = None  # what the connected edge announced
        self._resolver = PinnedResolver()
        self._upgrade_headers: Any = None
        self.index = index
        self.edge = redact_url(url)
        self.label = f"{self.edge}#{index}"
        self._get_config = get_config
        self._accept = accept
        self._on_state = on_state
        self._on_crash = on_crash
        self._on_restart = on_restart
        self.supervised: Supervised | None = None
        self.state = "idle"
        self.last_error: str | None = None
        self.last_reason: str | None = None  # why the last attempt ended (a bounded metric label)
        self.connected_since: float | None = None
        self.connects = 0
        self.mux: Multiplexer | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # interrupts the backoff sleep when stopping
        self._tunnel_stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._auth_reason: str | None = None

    # -- public -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.supervised = Supervised(f"tunnel {self.label}", "tunnel", self.run, on_crash=self._crashed,
                                     on_restart=self._on_restart)
        self._task = self.supervised.task

    def _crashed(self, sup: Supervised) -> None:
        mux = self.mux
        if mux is not None and not mux.closed:
            mux.close(f"the tunnel task failed: {sup.error}")
        self._tunnel_stop = None
        self.connected_since = None
        self.last_error = f"the tunnel task failed ({sup.error}); restarting it"
        self.last_reason = "task_failed"
        self._set_state("failed")
        if self._on_crash is not None:
            self._on_crash(sup)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def status(self) -> dict[str, Any]:
        mux = self.mux
        return {
            "edge": self.edge,
            "connection": self.index,
            "address": self.address,
            "edgeId": self.edge_id,
            "state": self.state,
            "connectedSince": self.connected_since,
            "connects": self.connects,
            "lastError": self.last_error,
            "restarts": self.supervised.restarts if self.supervised else 0,
            "streams": len(mux.streams) if mux and not mux.closed else 0,
            "streamsOpened": mux.streams_opened if mux else 0,
            "refused": dict(mux.refused) if mux else {},
        }

    async def drain_and_stop(self, deadline: float) -> None:
        """Refuse new streams, let streams in flight finish until `deadline` (loop time), close 1001."""
        self._stopping = True
        mux = self.mux
        if mux is not None and not mux.closed:
            mux.draining = True
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining > 0 and mux.streams:
                await mux.wait_idle(remaining)
        await self.stop()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.supervised is not None and self.supervised.down:
            self.supervised.task.cancel()  # waiting to restart after a failure: nothing to drain
        if self._tunnel_stop is not None:
            self._tunnel_stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task

    # -- the loop ---------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(self)

    async def run(self) -> None:
        cfg = self._get_config()
        backoff = Backoff(cfg.reconnect.initial_seconds, cfg.reconnect.max_seconds,
                          fast_window=cfg.reconnect.fast_window_seconds)
        connector = aiohttp.TCPConnector(use_dns_cache=False, force_close=True, resolver=self._resolver)
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._upgrade_answered)
        async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
            while not self._stopping:
                started = time.monotonic()
                connects = self.connects
                reason = await self._attempt(session)
                if self.stopping:
                    break
                if time.monotonic() - started >= STABLE_SECONDS:
                    backoff.reset()
                cfg = self._get_config()
                backoff.initial, backoff.cap = cfg.reconnect.initial_seconds, cfg.reconnect.max_seconds
                backoff.fast_window = cfg.reconnect.fast_window_seconds
                # An established tunnel that was lost (edge restarting with 1001, dropped connection) is
                # likely back within a second: retry quickly for a short window. A refused token is not.
                if self.connects != connects and reason not in ("auth_failed", "duplicate_edge"):
                    backoff.lost()
                delay = backoff.next_delay()
                self.last_reason = reason
                self._set_state("backoff")
                log.info("tunnel down (%s); reconnecting in %.2f s", reason, delay,
                         extra={"tunnel": self.label})
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        self._set_state("stopped")

    async def _upgrade_answered(self, _: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        self._upgrade_headers = params.response.headers

    def _ssl(self, cfg: SidecarConfig) -> ssl.SSLContext | bool:
        if not self.url.startswith("wss://"):
            return False
        return ssl.create_default_context(cafile=cfg.edge.ca_file)

    async def _attempt(self, session: aiohttp.ClientSession) -> str:
        cfg = self._get_config()
        token = read_token(cfg)
        mode = cfg.edge.token_in
        url, headers = self.url, {PEER_HEADER: PEER_SIDECAR}
        if cfg.edge.listener_groups:
            headers[GROUPS_HEADER] = groups_value(cfg.edge.listener_groups)
        if token and mode == "query":
            url = _with_query_token(url, token)
        elif token and mode == "header":
            headers["Authorization"] = f"Bearer {token}"
        self._set_state("connecting")
        pool = self.pool
        self.edge_id = None
        if pool is None:
            dialled = await self._dial(session, url, headers, cfg, token)
        else:
            self.address = self._resolver.address = await pool.choose_address(self)
            # Serialised (mproxy.sidecar.edges) so the "have" list is current; but a dial stuck on a
            # blackholed address must not hold the others up for DIAL_TIMEOUT: past LOCK_WAIT dial anyway
            # (two slots may then land on one edge; the pool closes the second).
            locked = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.dial_lock.acquire(), LOCK_WAIT)
                locked = True
            try:
                have = pool.saturated(self)
                if have:
                    headers[HAVE_HEADER] = have_value(have)
                dialled = await self._dial(session, url, headers, cfg, token)
            finally:
                if locked:
                    pool.dial_lock.release()
        if isinstance(dialled, str):
            return dialled
        try:
            return await self._hold(dialled, cfg, token)
        finally:
            if pool is not None:
                pool.lost(self)

    async def _dial(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                    cfg: SidecarConfig, token: str | None) -> str | aiohttp.ClientWebSocketResponse:
        """The upgraded WebSocket, accepted by the pool; or why not (a reason label)."""
        self._upgrade_headers = None
        pool = self.pool
        try:
            ssl_ctx = self._ssl(cfg)
            async with asyncio.timeout(DIAL_TIMEOUT):
                ws = await session.ws_connect(
                    url, headers=headers, ssl=ssl_ctx, autoping=False, autoclose=True, compress=0,
                    max_msg_size=max(4 << 20, 2 * cfg.limits.max_frame_bytes),
                )
        except aiohttp.WSServerHandshakeError as exc:
            announced = parse_announced(exc.headers or {})
            if exc.status == 409 and announced is not None and pool is not None:
                pool.duplicate(self, announced)
                self.last_error = f"landed on edge {announced.id} again, which already has its tunnels"
                return "duplicate_edge"
            if pool is not None:
                pool.dial_failed(self)
            reason = "auth_failed" if exc.status in (401, 403) else "handshake_failed"
            why = exc.headers.get(ERROR_HEADER) if exc.headers else None  # an mproxy edge says why
            return self._failed(reason, f"the edge answered HTTP {exc.status} to the WebSocket upgrade"
                                + (f": {why[:300]}" if why else ""))
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
            if pool is not None:
                pool.dial_failed(self)
            detail = f"{type(exc).__name__}: {exc}"
            if token:  # some errors quote the URL, and with tokenIn=query the URL holds the token
                detail = detail.replace(token, "<token>")
            return self._failed("connect_failed", detail)
        announced = parse_announced(self._upgrade_headers or {})
        self.edge_id = announced.id if announced else None
        if pool is not None and not pool.accept(self, announced):
            await ws.close(code=1000, message=b"duplicate edge")
            return "duplicate_edge"
        return ws

    async def _hold(self, ws: aiohttp.ClientWebSocketResponse, cfg: SidecarConfig, token: str | None) -> str:
        mode = cfg.edge.token_in
        sock = ws.get_extra_info("socket")
        fixed = cfg.limits.tunnel_send_buffer_bytes
        if fixed and sock is not None:
            set_send_buffer(sock, fixed)
        control = ControlChannel(lambda value: mux.send_control(value), name=self.label)
        mux = Multiplexer(
            on_stream=lambda stream: self._accept(stream, self),
            on_control=control.feed,
            limits=mux_limits(cfg),
            implicit_open=True,
            name=self.label,
        )
        stop = asyncio.Event()
        self._tunnel_stop = stop
        tasks: set[asyncio.Task[None]] = set()

        def on_hello(hello: Hello) -> None:
            mux.send_control(reply(hello.id))
            if token and mode == "handshake":
                task = asyncio.get_running_loop().create_task(self._add_token(control, token, stop))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        control.on_hello = on_hello
        # telebit-relay's unsolicited notices: its device never answers them, nor do we.
        control.notifications["grant"] = lambda req: None
        control.notifications["access_token"] = lambda req: None
        self.mux = mux
        self.connects += 1
        self.connected_since = time.time()
        self.last_error = None
        self._set_state("connected")
        log.info("tunnel connected", extra={"tunnel": self.label})
        if self._stopping:
            stop.set()
        if fixed is None and sock is not None:
            tuner = asyncio.get_running_loop().create_task(_tune_send_buffer(sock))
            tasks.add(tuner)
            tuner.add_done_callback(tasks.discard)
        result = await run_tunnel(ws, mux, heartbeat=Heartbeat(cfg.heartbeat.interval_seconds,
                                                               cfg.heartbeat.timeout_seconds), stop=stop)
        control.close()
        for task in list(tasks):
            task.cancel()
        self._tunnel_stop = None
        self.connected_since = None
        reason = self._auth_reason or result.reason
        self._auth_reason = None
        if reason != "auth_failed" and reason != "shutdown":
            self.last_error = str(result)
            level = logging.INFO if result.reason == "peer_closed" else logging.WARNING
            log.log(level, "tunnel closed: %s", result, extra={"tunnel": self.label})
        return reason

    async def _add_token(self, control: ControlChannel, token: str, stop: asyncio.Event) -> None:
        try:
            answer = await control.request("add_token", token)
        except CommandError as exc:
            log.warning("add_token got no answer: %s", exc, extra={"tunnel": self.label})
            return
        if not answer.ok:
            err = answer.error
            detail = (f"{err.get('code', '')} {err.get('message', '')}".strip() if isinstance(err, dict)
                      else str(err)[:200]) or "refused"
            self.last_error = f"the edge refused the token ({detail}); check edge.tokenFile"
            log.error("%s", self.last_error, extra={"tunnel": self.label})
            self._auth_reason = "auth_failed"
            stop.set()

    def _failed(self, reason: str, detail: str) -> str:
        self.last_error = detail
        log.warning("cannot reach the edge: %s", detail, extra={"tunnel": self.label})
        return reason
