"""Reconnect delays: exponential backoff with full jitter, a fast window after a lost tunnel, and a cap.

delay(n) = uniform(0, min(cap, initial * 2**n)) (AWS "full jitter"), so a fleet of sidecars that lost the same
relay spreads its reconnects; the first retry is quick (at most `initial`). `reset()` after a connection that
lived long enough. A floor keeps a misconfigured tiny `initial` from becoming a tight loop.

`lost()` after an established tunnel ends (the edge restarting or draining, a dropped connection): for the
next `fast_window` seconds, and at most FAST_MAX_ATTEMPTS times, delays are uniform(FAST_MIN, FAST_MAX), so a
restarted edge is found within ~0.25 s of listening instead of waiting out a doubled backoff. Then the
normal backoff resumes from the first ceiling above FAST_MAX (0.4 s with initial 0.1). One fast window per
`reset()`: a tunnel that keeps dropping right after connecting gets exponential backoff, never a
4-per-second loop that lasts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["FAST_MAX", "FAST_MAX_ATTEMPTS", "FAST_MIN", "Backoff"]

FAST_MIN = 0.1  # the fast window's delays: never a tight loop, ...
FAST_MAX = 0.25  # ... and jittered so a fleet does not dial in lockstep
FAST_MAX_ATTEMPTS = 40  # bounds the fast window whatever its length


class Backoff:
    def __init__(self, initial: float = 0.1, cap: float = 30.0, *, floor: float = 0.01,
                 fast_window: float = 5.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.floor = floor
        self.fast_window = fast_window
        self.attempt = 0
        self._rng = rng or random.Random()
        self._clock = clock
        self._fast_until: float | None = None  # end of the open fast window
        self._fast_left = 0
        self._fast_used = False  # a fast window was opened since the last reset()

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.initial * 2.0 ** min(self.attempt, 60))

    def lost(self) -> None:
        """An established tunnel ended for a reason worth retrying quickly: open the fast window."""
        if self._fast_used or self.fast_window <= 0:
            return
        self._fast_used = True
        self._fast_until = self._clock() + self.fast_window
        self._fast_left = FAST_MAX_ATTEMPTS
        self.attempt = 0

    def in_fast_window(self) -> bool:
        """The next delay comes from the fast window."""
        return (self._fast_until is not None and self._fast_left > 0
                and self._clock() < self._fast_until)

    def next_delay(self) -> float:
        if self.in_fast_window():
            self._fast_left -= 1
            return float(self._rng.uniform(FAST_MIN, FAST_MAX))
        if self._fast_until is not None:  # the window just ended: continue from delays above the fast ones
            self._fast_until = None
            while self.attempt < 60 and self.ceiling() < FAST_MAX:
                self.attempt += 1
        delay = max(self.floor, float(self._rng.uniform(0, self.ceiling())))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self._fast_until = None
        self._fast_used = False
