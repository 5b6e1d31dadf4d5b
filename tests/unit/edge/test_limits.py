"""Per-address admission: concurrency cap, token-bucket rate, bounded table."""

from __future__ import annotations

from mproxy.edge.limits import ClientLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_concurrency_cap_and_release() -> None:
    lim = ClientLimiter(max_open=2, rate=1000, burst=1000)
    assert lim.admit("a") is None and lim.admit("a") is None
    assert lim.admit("a") == "too_many_connections"
    assert lim.admit("b") is None  # other addresses are unaffected
    lim.release("a")
    assert lim.admit("a") is None


def test_rate_refills_over_time() -> None:
    clock = Clock()
    lim = ClientLimiter(max_open=100, rate=2, burst=3, clock=clock)
    assert [lim.admit("a") for _ in range(4)] == [None, None, None, "rate_limited"]
    clock.now += 0.5  # one token back at 2/s
    assert lim.admit("a") is None
    assert lim.admit("a") == "rate_limited"


def test_table_is_bounded() -> None:
    clock = Clock()
    lim = ClientLimiter(max_open=10, rate=1, burst=5, max_addresses=2, clock=clock)
    assert lim.admit("a") is None and lim.admit("b") is None
    assert lim.admit("c") == "too_many_clients"
    lim.release("a")
    clock.now += 10
    assert lim.admit("c") is None  # "a" was swept once idle and refilled
    assert len(lim) <= 2
