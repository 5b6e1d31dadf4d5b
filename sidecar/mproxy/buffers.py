"""The E_BUFFER rule, one place for both roles: how much a stream may hold for its local socket.

Each role relays tunnel data into a local socket (the edge into the client, the sidecar into the backend).
When that socket is slow the role sends `pause` for the stream; bytes already in flight keep arriving
(on loopback with autotuned TCP buffers easily 10 MiB), and a hostile peer may ignore the pause entirely.
The rule, per stream, measured on the bytes queued for the local socket:
- past `hard` bytes: cut at once;
- past `soft` bytes: cut once the pause is `grace` seconds old, checked when more data arrives AND on a
  timer (a burst that then goes quiet is still cut);
and per tunnel (the sum over its streams of what each holds past `allowance`, its high-water mark, since
up to that much is normal before a pause is even sent): past `tunnel` bytes the biggest streams are cut
until the tunnel is back under it, so `streams x hard` is not the worst case.

A role registers each stream as a `Holder` in its tunnel's `TunnelBuffers` (`buffers_of(mux, rule)`
keeps one per multiplexer), reports `update(holder, size)` after each write, `paused`/`resumed` when it
sends pause/resume, and `forget` when the stream ends. Cutting is the holder's `overflow(reason, limit)`;
`limit` names the rule that cut (one of CUT_LIMITS), for a metric label.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CUT_LIMITS", "BufferRule", "Holder", "TunnelBuffers", "buffers_of"]

MiB = 1024 * 1024
# Which rule cut a stream: past `hard` at once, past `soft` after the grace, or the tunnel's cap.
CUT_LIMITS = ("hard", "soft", "tunnel")


@dataclass(frozen=True, slots=True)
class BufferRule:
    soft: int = 8 * MiB
    hard: int = 64 * MiB
    grace: float = 2.0
    tunnel: int = 256 * MiB
    allowance: int = 0  # bytes per stream not counted against `tunnel` (the role's high-water mark)

    def __post_init__(self) -> None:
        if not 0 < self.soft <= self.hard:
            raise ValueError(f"buffer limits need 0 < soft ({self.soft}) <= hard ({self.hard})")
        if self.tunnel < self.soft:
            raise ValueError(f"the tunnel buffer limit ({self.tunnel}) must be at least the soft limit "
                             f"({self.soft})")


class Holder(Protocol):
    def buffered_bytes(self) -> int:
        """Bytes queued for the local socket right now."""

    def overflow(self, reason: str, limit: str) -> None:
        """Cut the stream (E_BUFFER) because of rule `limit` (CUT_LIMITS); the ledger forgets the holder
        right after."""


class TunnelBuffers:
    """One tunnel's ledger of buffered bytes per stream, and the pause age of each paused stream."""

    def __init__(self, rule: BufferRule) -> None:
        self.rule = rule
        self.total = 0
        self.cuts = 0
        self._size: dict[Holder, int] = {}
        self._paused: dict[Holder, float] = {}
        self._timers: dict[Holder, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._size)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def paused(self, holder: Holder) -> None:
        self._paused.setdefault(holder, self._now())

    def resumed(self, holder: Holder) -> None:
        self._paused.pop(holder, None)
        timer = self._timers.pop(holder, None)
        if timer is not None:
            timer.cancel()

    def forget(self, holder: Holder) -> None:
        self.resumed(holder)
        self.total -= self._size.pop(holder, 0)

    def _count(self, holder: Holder, size: int) -> None:
        counted = max(0, size - self.rule.allowance)
        self.total += counted - self._size.get(holder, 0)
        self._size[holder] = counted

    def update(self, holder: Holder, size: int) -> bool:
        """Record `holder`'s queued bytes and apply the rule; True if it was cut."""
        self._count(holder, size)
        if self._check(holder, size):
            return True
        if self.total > self.rule.tunnel:
            self._shed()
            return holder not in self._size
        return False

    def _check(self, holder: Holder, size: int) -> bool:
        rule = self.rule
        if size <= rule.soft:
            return False
        if size > rule.hard:
            self._cut(holder, f"more than {rule.hard} bytes buffered for one stream", "hard")
            return True
        since = self._paused.get(holder)
        if since is None:
            return False
        if self._now() - since >= rule.grace - 0.001:  # a timer may fire a hair early
            self._cut(holder, f"more than {rule.soft} bytes still buffered {rule.grace:g} s after pause",
                      "soft")
            return True
        if holder not in self._timers:  # no more data may come: check again when the grace ends
            loop = asyncio.get_running_loop()
            self._timers[holder] = loop.call_at(since + rule.grace, self._on_timer, holder)
        return False

    def _on_timer(self, holder: Holder) -> None:
        self._timers.pop(holder, None)
        if holder in self._size:
            self.update(holder, holder.buffered_bytes())

    def _shed(self) -> None:
        """Over the tunnel cap: refresh the sizes (sockets drain between updates), then cut the biggest."""
        for holder in list(self._size):
            self._count(holder, holder.buffered_bytes())
        while self.total > self.rule.tunnel and self._size:
            biggest = max(self._size, key=self._size.__getitem__)
            self._cut(biggest, f"the tunnel holds more than {self.rule.tunnel} buffered bytes; this "
                               "stream held the most", "tunnel")

    def _cut(self, holder: Holder, reason: str, limit: str) -> None:
        self.cuts += 1
        timer = self._timers.pop(holder, None)
        if timer is not None:
            timer.cancel()
        holder.overflow(reason, limit)
        self.forget(holder)  # whether or not the holder's stream_closed did


_ledgers: weakref.WeakKeyDictionary[object, TunnelBuffers] = weakref.WeakKeyDictionary()


def buffers_of(tunnel: object, rule: BufferRule) -> TunnelBuffers:
    """The ledger of `tunnel` (e.g. its Multiplexer), made on first use and gone with the tunnel. A
    different `rule` (a config reload) replaces the ledger's from then on."""
    ledger = _ledgers.get(tunnel)
    if ledger is None:
        ledger = _ledgers[tunnel] = TunnelBuffers(rule)
    elif ledger.rule != rule:
        ledger.rule = rule
    return ledger
