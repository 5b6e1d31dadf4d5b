"""The reconnect schedule: full-jitter exponential backoff, and the fast window after a lost tunnel."""

from __future__ import annotations

import random

import pytest

from mproxy.tunnel.backoff import FAST_MAX, FAST_MAX_ATTEMPTS, FAST_MIN, Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(fast_window: float = 5.0, seed: int = 7) -> tuple[Backoff, Clock]:
    clock = Clock()
    return Backoff(0.1, 30.0, fast_window=fast_window, rng=random.Random(seed), clock=clock), clock


def run(backoff: Backoff, clock: Clock, n: int) -> list[float]:
    """n delays, the clock advancing by each delay (as the reconnect loop sleeps them)."""
    out = []
    for _ in range(n):
        d = backoff.next_delay()
        out.append(d)
        clock.now += d
    return out


def test_normal_backoff_doubles_its_ceiling_up_to_the_cap() -> None:
    b, _ = make()
    ceilings = []
    for _ in range(12):
        ceilings.append(b.ceiling())
        d = b.next_delay()
        assert b.floor <= d <= ceilings[-1]
    assert ceilings[:4] == [0.1, 0.2, 0.4, 0.8]
    assert ceilings[-1] == 30.0


def test_lost_tunnel_gets_fast_jittered_retries_for_the_window_then_normal_backoff() -> None:
    b, clock = make()
    start = clock.now
    b.lost()
    delays: list[float] = []
    fast: list[float] = []
    for _ in range(60):
        was_fast = b.in_fast_window()
        delays.append(run(b, clock, 1)[0])
        if was_fast:
            assert len(fast) == len(delays) - 1  # the fast delays come first, in one run
            fast.append(delays[-1])
    # Every fast delay is in [0.1, 0.25]: quick, yet never a tight loop, and jittered (not all equal).
    assert all(FAST_MIN <= d <= FAST_MAX for d in fast)
    assert len(set(fast)) > 1
    # The window covers ~5 s of waiting and no more.
    assert 5.0 - FAST_MAX <= sum(fast) < 5.0 + FAST_MAX
    assert 5.0 / FAST_MAX <= len(fast) <= min(FAST_MAX_ATTEMPTS, 5.0 / FAST_MIN + 1)
    # Then exponential backoff from the first ceiling above the fast delays: 0.4, 0.8, 1.6, ...
    assert clock.now - start > 5.0
    assert b.attempt == 2 + len(delays) - len(fast)
    assert max(delays[len(fast):]) > 1.0


def test_fast_window_attempts_are_bounded_even_if_time_stands_still() -> None:
    b, _ = make()
    b.lost()
    count = 0
    while b.in_fast_window():
        b.next_delay()
        count += 1
        assert count <= FAST_MAX_ATTEMPTS
    assert count == FAST_MAX_ATTEMPTS


def test_one_fast_window_per_reset_so_a_flapping_tunnel_backs_off() -> None:
    b, clock = make()
    b.lost()
    run(b, clock, 3)
    b.lost()  # connected again, dropped again before it was stable: no new window...
    clock.now += 10.0  # ... and the first window has expired
    assert not b.in_fast_window()
    assert b.next_delay() <= 0.4 and b.attempt == 3
    run(b, clock, 5)
    assert b.ceiling() >= 3.2
    b.reset()  # a tunnel that lived long enough earns the fast path again
    b.lost()
    assert b.in_fast_window() and FAST_MIN <= b.next_delay() <= FAST_MAX


def test_zero_window_disables_the_fast_path() -> None:
    b, clock = make(fast_window=0.0)
    b.lost()
    assert not b.in_fast_window()
    assert run(b, clock, 3) and b.ceiling() == 0.8


def test_schedule_is_deterministic_for_a_seed() -> None:
    a, ca = make(seed=3)
    b, cb = make(seed=3)
    a.lost()
    b.lost()
    assert run(a, ca, 30) == run(b, cb, 30)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="initial <= cap"):
        Backoff(1.0, 0.5)
