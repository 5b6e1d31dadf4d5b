"""Supervised: a task that raises is logged once per failure, counted, restarted after a growing delay;
a normal return ends supervision; cancelling stops it; a failing hook does not."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from mproxy.tunnel.supervisor import Supervised


async def test_a_failing_task_is_restarted_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    crashes: list[int] = []
    loop = asyncio.get_running_loop()

    async def work() -> None:
        runs.append(loop.time())
        if len(runs) < 4:
            raise ValueError(f"fault {len(runs)}")

    sup = Supervised("worker", "test", work, initial=0.05, on_crash=lambda s: crashes.append(s.restarts))
    await asyncio.wait_for(sup.task, 5)
    assert len(runs) == 4 and crashes == [1, 2, 3] and sup.restarts == 3 and not sup.down
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # 0.05 halved at least, then 0.2 halved at least; less 1 ms, uvloop's timer resolution (a 25 ms delay
    # was seen to fire 0.000000002 s early on loop.time()).
    assert gaps[0] >= 0.025 - 0.001 and gaps[2] >= 0.1 - 0.001
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 3 and "ValueError: fault 1" in lines[0]


async def test_cancel_stops_it_and_a_broken_hook_does_not() -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        raise RuntimeError("x")

    def broken(_: Supervised) -> None:
        raise KeyError("hook")

    sup = Supervised("worker", "test", work, initial=10, on_crash=broken)
    await started.wait()
    await asyncio.sleep(0)
    assert sup.down and sup.error == "RuntimeError: x"
    await sup.stop()
    assert sup.task.cancelled()
