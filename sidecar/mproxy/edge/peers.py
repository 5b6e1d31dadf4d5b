"""The other edge replicas and what each grants: found from config, polled, forgotten when silent.

`PeerSet` resolves `peers.hostname` to every address (a headless Service; `peers.nameservers` or the system
resolver) every `resolveSeconds`, or takes the static `peers.addresses`, and asks each one for its grants
(mproxy.edge.peer_endpoint) every `refreshSeconds`. An answer whose edge id is this edge's own is this edge:
that address is skipped from then on. A peer not heard from for `expireSeconds` is forgotten, so a stale
table cannot keep sending clients to an edge that lost its tunnel (and that edge refuses them anyway).

Why short polling and not a push channel: an answer is a few hundred bytes, polling needs no connection
state to repair when a peer restarts (the next poll finds the new pod), and the delay it adds to a new grant
is bounded by `refreshSeconds` (1 s by default; measured in tests/e2e/multiedge/test_forward.py). With N
replicas that is N*(N-1) small requests per refresh, nothing next to the client traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mproxy.config.common import LISTENER_GROUP
from mproxy.config.edge import PeersConfig
from mproxy.config.fields import split_listen
from mproxy.edge.auth import Grant, normalize_name
from mproxy.edge.peer_auth import REQUEST_HEADER, SIGNATURE_HEADER, PeerAuthError, PeerKeys
from mproxy.metrics.peers import PeerMetrics
from mproxy.resolve import ResolveError, resolve_all

log = logging.getLogger("mproxy.edge.peers")

__all__ = ["GRANTS_PATH", "MAX_GRANT_KEYS", "Peer", "PeerSet"]

GRANTS_PATH = "/.mproxy/peer/grants"
MAX_PEERS = 64  # addresses polled; a hostname with more is cut (edges are a handful of replicas)
MAX_ANSWER_BYTES = 1 << 20
MAX_GRANT_KEYS = 10_000  # names + ports one peer may announce

Target = tuple[str, int]  # a peer's tunnel endpoint


@dataclass(frozen=True, slots=True)
class Peer:
    address: str  # where it answered; its forward port is on the same address
    edge_id: str
    forward_port: int
    grant: Grant  # what its tunnels serve on every listener
    draining: bool
    fetched: float  # monotonic time of the answer
    groups: Mapping[str, Grant] = field(default_factory=dict)  # served on that listener group's only

    def serves(self, name: str, port: int, group: str | None = None) -> bool:
        """Whether a client of a listener in `group` (None: no group) for `name` or `port` has a tunnel
        there."""
        scoped = self.groups.get(group) if group is not None else None
        return any(g.covers_name(name) if name else g.covers_port(port)
                   for g in (self.grant, scoped) if g is not None)

    def serves_all(self, group: str | None) -> bool:
        """Whether a tunnel there takes every client of listener group `group` (a group-wide grant)."""
        scoped = self.groups.get(group) if group is not None else None
        return scoped is not None and group in scoped.wide


def grant_json(grant: Grant) -> dict[str, Any]:
    """One group's entry in a grants answer: {domains, ports} and `all: true` when a tunnel takes every
    client of the group (a group-wide grant)."""
    out: dict[str, Any] = {"domains": sorted(grant.domains), "ports": sorted(grant.ports)}
    if grant.wide:
        out["all"] = True
    return out


def _grant(obj: Mapping[str, Any], what: str) -> Grant:
    domains, ports = obj.get("domains", []), obj.get("ports", [])
    if not isinstance(domains, list) or not isinstance(ports, list):
        raise ValueError(f"{what}domains and ports must be lists")
    names = {normalize_name(d) if isinstance(d, str) else None for d in domains}
    if None in names:
        raise ValueError(f"{what}domains must be DNS names")
    if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
        raise ValueError(f"{what}ports must be port numbers")
    return Grant(frozenset(n for n in names if n is not None), frozenset(ports))


def parse_answer(body: bytes) -> tuple[str, int, Grant, bool, dict[str, Grant]]:
    """(edge id, forward port, grant, draining, grants per listener group) from a grants answer; raises
    ValueError."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    edge_id, port, draining = data.get("id"), data.get("forwardPort"), data.get("draining", False)
    if not isinstance(edge_id, str) or not edge_id or len(edge_id) > 63:
        raise ValueError("id must be a short string")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError("forwardPort must be a port number")
    if not isinstance(draining, bool):
        raise ValueError("draining must be a boolean")
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, dict) or not all(isinstance(v, dict) for v in raw_groups.values()):
        raise ValueError("groups must map group names to {domains, ports, all}")
    keys = sum(len(v) for g in [data, *raw_groups.values()] for k in ("domains", "ports")
               if isinstance(v := g.get(k), list))
    if keys > MAX_GRANT_KEYS or len(raw_groups) > MAX_GRANT_KEYS:
        raise ValueError(f"over {MAX_GRANT_KEYS} names and ports")
    groups = {}
    for name, value in raw_groups.items():
        if not LISTENER_GROUP.fullmatch(name):
            raise ValueError("groups must be named like listener groups")
        everyone = value.get("all", False)
        if not isinstance(everyone, bool):
            raise ValueError(f"groups.{name}.all must be a boolean")
        plain = _grant(value, f"groups.{name}.")
        groups[name] = Grant(plain.domains, plain.ports, wide=frozenset({name}) if everyone else frozenset())
    return edge_id, port, _grant(data, ""), draining, groups


def _rotated(peers: list[Peer], turn: int) -> list[Peer]:
    k = turn % len(peers) if peers else 0
    return peers[k:] + peers[:k]


def static_targets(addresses: tuple[str, ...], default_port: int) -> list[Target]:
    out = []
    for item in addresses:
        if item.count(":") == 1 or item.startswith("["):
            out.append(split_listen(item, "peers.addresses[]"))
        else:
            out.append((item.strip("[]"), default_port))
    return out


class PeerSet:
    def __init__(self, config: PeersConfig, *, edge_id: str, keys: PeerKeys, metrics: PeerMetrics,
                 tls: bool, tunnel_port: Callable[[], int]) -> None:
        self.config = config
        self.edge_id = edge_id
        self.keys = keys
        self.metrics = metrics
        self.scheme = "https" if tls else "http"
        self._tunnel_port = tunnel_port  # known once the relay listens
        self.targets: list[Target] = []
        self.peers: dict[Target, Peer] = {}
        self.own: set[Target] = set()  # addresses that answered with this edge's id
        self.errors: dict[Target, str] = {}
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.config.port or self._tunnel_port()

    async def start(self) -> None:
        # A peer's tunnel certificate names the public host, not the pod address dialled here: the
        # answer's HMAC is what authenticates it, and it carries no secret.
        connector = aiohttp.TCPConnector(limit=MAX_PEERS, ssl=False)
        self._session = aiohttp.ClientSession(connector=connector)
        # One round before the edge reports ready, so that a new replica already knows where to forward
        # the clients a rolling restart sends it before any sidecar reached it.
        try:
            async with asyncio.timeout(2 * self.config.connect_timeout_seconds + 1):
                await self._resolve()
                await self.refresh()
        except TimeoutError:
            log.warning("peers: the first round of grants took too long; going on in the background")
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    # -- lookup -------------------------------------------------------------------------------------

    def candidates(self, name: str, port: int, group: str | None = None) -> list[Peer]:
        """Fresh, non-draining peers with a tunnel for `name` (or `port` when there is no name) that takes
        clients of listener group `group`, rotated so that forwarded clients spread over them; then those
        whose tunnel takes every client of `group` (a group-wide grant ranks below a specific one)."""
        now = time.monotonic()
        live = [p for p in self.peers.values() if now - p.fetched <= self.config.expire_seconds
                and not p.draining]
        specific = [p for p in live if p.serves(name, port, group)]
        wide = [p for p in live if p not in specific and p.serves_all(group)]
        if not specific and not wide:
            return []
        self._turn += 1
        return _rotated(specific, self._turn) + _rotated(wide, self._turn)

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        for target in self.targets:
            if target in self.own:
                continue
            peer = self.peers.get(target)
            item: dict[str, Any] = {"address": f"{target[0]}:{target[1]}"}
            if peer is not None:
                item |= {"id": peer.edge_id, "forwardPort": peer.forward_port, "draining": peer.draining,
                         "ageSeconds": round(now - peer.fetched, 1), "domains": sorted(peer.grant.domains),
                         "ports": sorted(peer.grant.ports)}
                if peer.groups:
                    item["groups"] = {g: grant_json(v) for g, v in sorted(peer.groups.items())}
            if target in self.errors:
                item["error"] = self.errors[target]
            out.append(item)
        return out

    # -- polling ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        resolved_at = time.monotonic()
        resolving: asyncio.Future[None] | None = None
        try:
            while True:
                await asyncio.sleep(self.config.refresh_seconds)
                # A slow DNS server must not stall the polls: peers would expire meanwhile.
                if resolving is None or resolving.done():
                    if resolving is not None and resolving.exception() is not None:
                        log.error("peers: resolving failed: %s", resolving.exception())
                    if time.monotonic() - resolved_at >= self.config.resolve_seconds or not self.targets:
                        resolving = asyncio.ensure_future(self._resolve())
                        resolved_at = time.monotonic()
                try:
                    await self.refresh()
                except Exception:  # a bug must not end peering for the edge's lifetime
                    log.exception("peer refresh failed; retrying")
        finally:
            if resolving is not None:
                resolving.cancel()

    async def _resolve(self) -> None:
        cfg = self.config
        targets = static_targets(cfg.addresses, self.port)
        if cfg.hostname is not None:
            try:
                found = await resolve_all(cfg.hostname, self.port, cfg.nameservers)
            except ResolveError as exc:
                log.warning("peers: %s; keeping the %d peers already known", exc, len(self.targets))
                return
            targets += [(address, self.port) for address in found]
        targets = list(dict.fromkeys(targets))[:MAX_PEERS]
        if targets != self.targets:
            log.info("peers: %d addresses to poll: %s", len(targets),
                     ", ".join(f"{h}:{p}" for h, p in targets))
        self.targets = targets
        for gone in set(self.peers) - set(targets):
            del self.peers[gone]
        for gone in set(self.errors) - set(targets):
            del self.errors[gone]
        self.own &= set(targets)

    async def refresh(self) -> None:
        """Poll every peer once, at the same time; then expire the silent ones."""
        polled = [t for t in self.targets if t not in self.own]
        await asyncio.gather(*(self._poll(t) for t in polled))
        now = time.monotonic()
        for target, peer in list(self.peers.items()):
            if now - peer.fetched > self.config.expire_seconds:
                log.warning("peer %s (%s:%d) not heard from for %g s; forgetting its grants", peer.edge_id,
                            target[0], target[1], self.config.expire_seconds)
                del self.peers[target]
        self.metrics.known.set(len(polled))
        self.metrics.reachable.set(len(self.peers))

    async def _poll(self, target: Target) -> None:
        assert self._session is not None
        host, port = target
        shown = f"[{host}]" if ":" in host else host
        auth = self.keys.sign_request(self.edge_id, time.time())
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout_seconds)
        try:
            async with self._session.get(f"{self.scheme}://{shown}:{port}{GRANTS_PATH}", timeout=timeout,
                                         headers={REQUEST_HEADER: auth}) as resp:
                body = await resp.content.read(MAX_ANSWER_BYTES + 1)
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError(f"the answer is over {MAX_ANSWER_BYTES} bytes")
                self.keys.verify_answer(auth.split(" ")[1], body, resp.headers.get(SIGNATURE_HEADER))
            edge_id, forward_port, grant, draining, groups = parse_answer(body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, PeerAuthError) as exc:
            error = str(exc) or type(exc).__name__
            if self.errors.get(target) != error:
                log.warning("peer %s:%d: cannot fetch its grants: %s", host, port, error)
            self.errors[target] = error
            return
        self.errors.pop(target, None)
        if edge_id == self.edge_id:
            self.own.add(target)
            self.peers.pop(target, None)
            return
        old = self.peers.get(target)
        if old is None or old.edge_id != edge_id:
            log.info("peer %s at %s:%d: forward port %d, %d names, %d ports", edge_id, host, port,
                     forward_port, len(grant.domains), len(grant.ports))
        self.peers[target] = Peer(host, edge_id, forward_port, grant, draining, time.monotonic(), groups)
