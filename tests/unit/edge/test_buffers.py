"""mproxy.buffers: the E_BUFFER rule both roles share (per stream, on a timer, and per tunnel)."""

from __future__ import annotations

import asyncio

import pytest

from mproxy.buffers import BufferRule, TunnelBuffers, buffers_of

MiB = 1024 * 1024


class _Holder:
    def __init__(self, ledger: TunnelBuffers, size: int = 0) -> None:
        self.ledger = ledger
        self.size = size
        self.cut: str | None = None
        self.limit: str | None = None

    def buffered_bytes(self) -> int:
        return self.size

    def overflow(self, reason: str, limit: str) -> None:
        self.cut, self.limit = reason, limit
        self.ledger.forget(self)

    def put(self, size: int) -> bool:
        self.size = size
        return self.ledger.update(self, size)


async def test_hard_limit_cuts_at_once() -> None:
    ledger = TunnelBuffers(BufferRule(soft=MiB, hard=4 * MiB, grace=10, tunnel=64 * MiB))
    h = _Holder(ledger)
    assert not h.put(3 * MiB)
    assert h.put(5 * MiB) and h.cut is not None and "4194304" in h.cut and h.limit == "hard"
    assert ledger.total == 0 and len(ledger) == 0


async def test_soft_limit_is_checked_on_a_timer_after_the_pause_grace() -> None:
    ledger = TunnelBuffers(BufferRule(soft=MiB, hard=64 * MiB, grace=0.2, tunnel=64 * MiB))
    h, calm = _Holder(ledger), _Holder(ledger)
    ledger.paused(h)
    ledger.paused(calm)
    assert not h.put(2 * MiB)  # over soft, pause too young: not yet
    assert not calm.put(2 * MiB)
    calm.size = MiB // 2  # drains below soft before the grace ends: kept
    await asyncio.sleep(0.35)  # no more data arrives
    assert h.cut is not None and "after pause" in h.cut and h.limit == "soft"
    assert calm.cut is None


async def test_resume_cancels_the_timer() -> None:
    ledger = TunnelBuffers(BufferRule(soft=MiB, hard=64 * MiB, grace=0.1, tunnel=64 * MiB))
    h = _Holder(ledger)
    ledger.paused(h)
    h.put(2 * MiB)
    ledger.resumed(h)
    await asyncio.sleep(0.2)
    assert h.cut is None


async def test_tunnel_cap_sheds_the_biggest_until_under_it() -> None:
    ledger = TunnelBuffers(BufferRule(soft=8 * MiB, hard=64 * MiB, grace=60, tunnel=10 * MiB))
    small, big, mid = _Holder(ledger), _Holder(ledger), _Holder(ledger)
    small.put(2 * MiB)
    big.put(6 * MiB)
    assert not mid.put(3 * MiB)  # 11 MiB > 10: the 6 MiB stream goes
    assert big.cut is not None and "held the most" in big.cut and big.limit == "tunnel"
    assert small.cut is None and mid.cut is None
    assert ledger.total == 5 * MiB


def test_rule_refuses_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="soft"):
        BufferRule(soft=2 * MiB, hard=MiB)
    with pytest.raises(ValueError, match="tunnel"):
        BufferRule(soft=8 * MiB, tunnel=MiB)


def test_one_ledger_per_tunnel() -> None:
    class Tunnel:
        pass

    a, b = Tunnel(), Tunnel()
    assert buffers_of(a, BufferRule()) is buffers_of(a, BufferRule())
    assert buffers_of(a, BufferRule()) is not buffers_of(b, BufferRule())
    reloaded = BufferRule(soft=MiB, hard=2 * MiB, grace=1, tunnel=4 * MiB)
    assert buffers_of(a, reloaded) is buffers_of(a, BufferRule())
    assert buffers_of(a, reloaded).rule == reloaded  # a config reload applies to a tunnel's next streams


async def test_bytes_under_the_high_water_mark_do_not_count_against_the_tunnel() -> None:
    # 1,000 slow clients each at their 1 MiB high-water mark are normal, not a reason to cut any.
    ledger = TunnelBuffers(BufferRule(soft=8 * MiB, hard=64 * MiB, grace=60, tunnel=16 * MiB,
                                      allowance=MiB))
    holders = [_Holder(ledger) for _ in range(100)]
    assert not any(h.put(MiB) for h in holders)
    assert ledger.total == 0
    holders[0].put(10 * MiB)
    holders[1].put(10 * MiB)  # 9 + 9 MiB over the allowance: past 16, the first biggest goes
    assert sum(h.cut is not None for h in holders) == 1 and ledger.total == 9 * MiB
