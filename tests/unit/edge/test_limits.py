"""Per-address admission: concurrency cap, token-bucket rate, bounded table."""

from __future__ import annotations

import functools

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


def test_ipv6_clients_are_counted_per_prefix() -> None:
    # Issue 10 item 8: one host holds a whole /64; counting each address let it bypass the limit.
    from mproxy.edge.limits import ClientLimiter, address_key

    lim = ClientLimiter(max_open=2, rate=1000, burst=1000)
    assert lim.admit("2001:db8:1:2::1") is None
    assert lim.admit("2001:db8:1:2:ffff::9") is None
    assert lim.admit("2001:db8:1:2:abcd::7") == "too_many_connections"
    assert lim.admit("2001:db8:1:3::1") is None  # another /64
    lim.release("2001:db8:1:2::1")
    assert lim.open_count("2001:db8:1:2::5") == 1
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1", 128) == "2001:db8::1/128"
    assert address_key("2001:db8:1:2::1", 48) == "2001:db8:1::/48"
    wide = ClientLimiter(max_open=1, rate=1000, burst=1000, ipv6_prefix=128)
    assert wide.admit("2001:db8::1") is None and wide.admit("2001:db8::2") is None


def test_pending_clients_shed_the_oldest() -> None:
    from mproxy.edge.limits import PendingClients

    shed: list[int] = []
    pending = PendingClients(2)
    for i in range(4):
        pending.add(i, functools.partial(shed.append, i))
    assert shed == [0, 1] and len(pending) == 2 and pending.shed == 2
    pending.discard(2)
    pending.add(9, lambda: shed.append(9))
    assert shed == [0, 1] and len(pending) == 2
