"""Reconnect delays: exponential backoff with full jitter, a fast first retry and a cap.

delay(n) = uniform(0, min(cap, initial * 2**n)) (AWS "full jitter"), so a fleet of sidecars that lost the same
relay spreads its reconnects; the first retry is quick (at most `initial`). `reset()` after a connection that
lived long enough. A floor keeps a misconfigured tiny `initial` from becoming a tight loop.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(self, initial: float = 0.1, cap: float = 30.0, *, floor: float = 0.01,
                 rng: random.Random | None = None) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.floor = floor
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.initial * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        delay = max(self.floor, float(self._rng.uniform(0, self.ceiling())))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
