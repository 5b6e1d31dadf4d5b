"""One edge URL's tunnel slots, kept so the sidecar holds `connectionsPerUrl` tunnels to every edge.

Edges announce an id and how many replicas serve the same tunnels (mproxy.tunnel.identity). The pool
grows its slots to `connectionsPerUrl x announced replicas` and hands each dial an address:

- every address the URL's hostname resolves to (a headless Service: one per replica), re-resolved on
  each dial and every `edge.resolveSeconds`; the least used address that did not just fail comes first;
- behind one load-balanced address, the same address again: the dial names the edge ids this sidecar
  already holds in full and such an edge answers 409, so the slot backs off and dials again until it
  lands on an edge it lacks.
- behind one address, once every tunnel is up and when the edges' count is live (`replicasFrom`), one
  more dial every `edge.probeSeconds` (a probe slot): an edge already held refuses it with 409, which
  carries the current count, or it lands on an edge added since (a scale-up) and stays. Otherwise a
  sidecar holding all it expects would never dial again and never learn of a new edge.

Dials of one pool are serialised (a few milliseconds each) so two slots never both count as the one
missing connection to the same edge. Nothing announced (a telebit relay) keeps today's behaviour:
`connectionsPerUrl` slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mproxy.observe.logs import redact_url
from mproxy.sidecar.discovery import ResolveError, resolve_all
from mproxy.tunnel.identity import Announced

if TYPE_CHECKING:
    from mproxy.sidecar.tunnel_client import TunnelClient

__all__ = ["MAX_SLOTS", "EdgePool"]

log = logging.getLogger("mproxy.sidecar.edges")

MAX_SLOTS = 256  # tunnels to one URL, whatever the edges announce (bounds connections and metric series)
FAILED_SECONDS = 5.0  # an address whose dial failed this recently is tried last
RESOLVE_MIN_SECONDS = 0.5  # dials in a burst share one lookup


class EdgePool:
    def __init__(self, url: str, connections: int, nameservers: tuple[str, ...], resolve_seconds: float,
                 spawn: Callable[[EdgePool, int], TunnelClient],
                 retire: Callable[[TunnelClient], None],
                 on_change: Callable[[EdgePool], None], probe_seconds: float = 0.0) -> None:
        self.url = url
        self.edge = redact_url(url)  # the URL as logs, metrics and /status show it
        self.stopped = False
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.connections = connections
        self.nameservers = nameservers
        self.resolve_seconds = resolve_seconds
        self.probe_seconds = probe_seconds
        self.probing = False  # one slot more than needed, dialling to look for a new edge
        self._probed_at = time.monotonic()
        self.slots: list[TunnelClient] = []
        self.addresses: list[str] = []
        self.resolve_error: str | None = None
        self.dial_lock = asyncio.Lock()
        self._spawn = spawn
        self._retire = retire
        self._on_change = on_change
        self._edges: dict[TunnelClient, Announced | None] = {}  # connected slots -> what their edge said
        self._using: dict[TunnelClient, str] = {}  # slot -> the address it dials or holds
        self._failed: dict[str, float] = {}
        self._address_id: dict[str, str] = {}  # address -> the edge id it last answered with
        self._resolved_at = 0.0
        self._replicas = 0  # the latest announced count (0: none announced yet)
        self._live = False  # ... and whether it is read live (replicasFrom): only then is a probe useful
        self._task: asyncio.Task[None] | None = None
        self._missing_logged: tuple[int, int] | None = None

    # -- counts -----------------------------------------------------------------------------------

    @property
    def expected(self) -> int:
        """Edges this sidecar should hold tunnels to: the announced replica count; 1 while no edge
        announced anything (a telebit relay: today's behaviour)."""
        return max(1, self._replicas)

    def edge_ids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for slot, ann in self._edges.items():
            key = ann.id if ann is not None else f"unidentified:{slot.index}"
            out[key] = out.get(key, 0) + 1
        return out

    @property
    def connected_edges(self) -> int:
        return len(self.edge_ids())

    def desired_slots(self) -> int:
        """connections x the announced count, or x the edges behind the addresses when more (a new pod
        in DNS is dialled before any edge announces the new count; addresses that answered with one id
        count once). An address that never answers (say an unroutable AAAA) gets a slot that keeps
        dialling with backoff, but does not raise `expected`."""
        if self._replicas == 0:
            return self.connections
        behind = {self._address_id.get(a, a) for a in self.addresses}
        return min(MAX_SLOTS, self.connections * max(self._replicas, len(behind)) + self.probing)

    def saturated(self, slot: TunnelClient) -> set[str]:
        """Edge ids `slot` must not land on: those already holding `connections` other tunnels."""
        counts: dict[str, int] = {}
        for other, ann in self._edges.items():
            if ann is not None and other is not slot:
                counts[ann.id] = counts.get(ann.id, 0) + 1
        return {edge for edge, n in counts.items() if n >= self.connections}

    # -- events from slots ------------------------------------------------------------------------

    async def choose_address(self, slot: TunnelClient) -> str | None:
        """The address `slot` dials next (None: let aiohttp resolve, as without a pool)."""
        await self._resolve()
        if not self.addresses:
            return None
        self._using.pop(slot, None)
        used = {a: 0 for a in self.addresses}
        for addr in self._using.values():
            if addr in used:
                used[addr] += 1
        now = time.monotonic()
        best = min(self.addresses, key=lambda a: (now - self._failed.get(a, -1e9) < FAILED_SECONDS, used[a]))
        self._using[slot] = best
        return best

    def dial_failed(self, slot: TunnelClient) -> None:
        addr = self._using.pop(slot, None)
        if addr is not None:
            self._failed[addr] = time.monotonic()
        if self.probing:
            self.probing = False
            self.reconcile()

    def probe_due(self) -> bool:
        """Dial once more? Only behind one address (more addresses show new pods themselves), with every
        slot holding a tunnel, edges whose count is live (a static one changes only with a rollout, which
        redials anyway) and `probe_seconds` since the last probe."""
        if (self.stopped or self.probing or not self.probe_seconds or not self._live
                or len(set(self.addresses)) > 1
                or time.monotonic() - self._probed_at < self.probe_seconds):
            return False
        live = [t for t in self.slots if not t.stopping]
        return bool(live) and all(t in self._edges for t in live)

    def probe(self) -> None:
        self._probed_at = time.monotonic()
        self.probing = True
        self.reconcile()

    def accept(self, slot: TunnelClient, announced: Announced | None) -> bool:
        """A tunnel is up: False when its edge already has all its connections (close it)."""
        if announced is not None:
            self._learn(slot, announced)
            if announced.id in self.saturated(slot):
                self.duplicate(slot, announced)
                return False
        self._edges[slot] = announced
        if self.probing:  # a new edge: its count (now learned) keeps the slot
            self.probing = False
            log.info("found edge %s behind %s", announced.id if announced else "?", self.edge)
        self._changed()
        return True

    def duplicate(self, slot: TunnelClient, announced: Announced | None) -> None:
        if announced is not None:
            self._learn(slot, announced)
        self._using.pop(slot, None)
        self.probing = False  # the probe (if this was it) learned the count; the spare slot goes
        self._changed()

    def _learn(self, slot: TunnelClient, announced: Announced) -> None:
        self._replicas, self._live = announced.replicas, announced.live
        addr = self._using.get(slot)
        if addr is not None:
            self._address_id[addr] = announced.id

    def lost(self, slot: TunnelClient) -> None:
        self._using.pop(slot, None)
        if self._edges.pop(slot, "gone") != "gone":
            self._changed()

    # -- slots ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    def stop(self) -> list[TunnelClient]:
        """Stop refreshing; the slots are the caller's to drain."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
        slots, self.slots = self.slots, []
        return slots

    def reconcile(self) -> None:
        if self.stopped:
            return
        want = self.desired_slots()
        live = [t for t in self.slots if not t.stopping]
        taken = {t.index for t in live}
        index = 0
        while len(live) < want:
            while index in taken:
                index += 1
            slot = self._spawn(self, index)
            taken.add(index)
            live.append(slot)
            self.slots.append(slot)
        if len(live) > want:
            # Slots not holding a tunnel go first, then tunnels to the edge with the most of them.
            counts = self.edge_ids()

            def cost(t: TunnelClient) -> tuple[int, int, int]:
                ann = self._edges.get(t)
                key = (ann.id if ann is not None else f"unidentified:{t.index}") if t in self._edges else ""
                return (t in self._edges, -counts.get(key, 0), -t.index)

            for slot in sorted(live, key=cost)[: len(live) - want]:
                self.slots.remove(slot)
                self._edges.pop(slot, None)
                self._using.pop(slot, None)
                self._retire(slot)

    def _changed(self) -> None:
        if self.stopped:
            return
        self.reconcile()
        have, want = self.connected_edges, self.expected
        # None held at all: each slot's own "cannot reach the edge" line says why, and TunnelDown fires.
        if 0 < have < want and self._missing_logged != (have, want):
            log.warning("tunnels to %d of %d edges for %s; dialling on for the missing ones", have, want,
                        self.edge)
        elif have >= want and self._missing_logged is not None and self._missing_logged[0] < want:
            log.info("tunnels to all %d edges for %s", want, self.edge)
        self._missing_logged = (have, want)
        self._on_change(self)

    async def _resolve(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._resolved_at < RESOLVE_MIN_SECONDS:
            return
        self._resolved_at = time.monotonic()
        try:
            found = await resolve_all(self.host, self.port, self.nameservers)
        except ResolveError as exc:
            if self.resolve_error != str(exc):
                log.warning("%s; dialling keeps the last known addresses", exc)
            self.resolve_error = str(exc)
            return
        self.resolve_error = None
        if found != self.addresses:
            if self.addresses:
                log.info("%s now resolves to %s", self.host, ", ".join(found))
            self.addresses = found
            self._failed = {a: t for a, t in self._failed.items() if a in found}
            self._address_id = {a: i for a, i in self._address_id.items() if a in found}
            self._changed()

    async def _refresh_loop(self) -> None:
        resolved = time.monotonic()
        while True:
            tick = min(self.resolve_seconds, self.probe_seconds or self.resolve_seconds)
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - resolved >= self.resolve_seconds - 1e-3:
                    resolved = time.monotonic()
                    await self._resolve(force=True)
                if self.probe_due():
                    self.probe()
            except Exception:  # the refresh is a nicety: a bug here must not stop the tunnels
                log.exception("re-resolving %s failed", self.host)

    def status(self) -> dict[str, Any]:
        return {
            "addresses": list(self.addresses),
            "resolveError": self.resolve_error,
            "expectedEdges": self.expected,
            "connectedEdges": self.connected_edges,
            "edges": self.edge_ids(),
        }
