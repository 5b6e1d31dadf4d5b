"""Per-client-address admission: concurrent connections and a token-bucket connection rate.

Memory stays bounded: an address is forgotten once it has no open connection and its bucket has
refilled, and the table is capped (`max_addresses`); past the cap new addresses are refused rather than
letting a flood of spoofed sources grow the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    open: int
    tokens: float
    stamp: float


class ClientLimiter:
    def __init__(self, *, max_open: int, rate: float, burst: int, max_addresses: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_open = max_open
        self.rate = rate
        self.burst = float(burst)
        self.max_addresses = max_addresses
        self._clock = clock
        self._table: dict[str, _Entry] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from `address`; returns None if admitted, else the reject reason
        ("too_many_connections", "rate_limited" or "too_many_clients"). Call `release` when it closes."""
        now = self._clock()
        entry = self._table.get(address)
        if entry is None:
            if len(self._table) >= self.max_addresses:
                self._sweep(now)
                if len(self._table) >= self.max_addresses:
                    return "too_many_clients"
            entry = self._table[address] = _Entry(0, self.burst, now)
        entry.tokens = min(self.burst, entry.tokens + (now - entry.stamp) * self.rate)
        entry.stamp = now
        if entry.open >= self.max_open:
            return "too_many_connections"
        if entry.tokens < 1.0:
            return "rate_limited"
        entry.tokens -= 1.0
        entry.open += 1
        return None

    def release(self, address: str) -> None:
        entry = self._table.get(address)
        if entry is None:
            return
        entry.open = max(0, entry.open - 1)
        if entry.open == 0 and entry.tokens >= self.burst - 1.0:
            # Nearly full bucket and nothing open: nothing worth remembering.
            del self._table[address]

    def _sweep(self, now: float) -> None:
        for address, entry in list(self._table.items()):
            refilled = entry.tokens + (now - entry.stamp) * self.rate >= self.burst
            if entry.open == 0 and refilled:
                del self._table[address]

    def open_count(self, address: str) -> int:
        entry = self._table.get(address)
        return entry.open if entry else 0

    def __len__(self) -> int:
        return len(self._table)
