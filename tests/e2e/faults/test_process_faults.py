"""SIGKILL and SIGTERM of the edge, a sidecar and a backend in the middle of 20 transfers.

Every stream a SIGKILL touches must end on both sides within a bounded time (the client sees EOF or a
reset, the backend's connection closes) with no corrupted byte; the streams it does not touch, and every
stream under SIGTERM (a drain), must arrive intact (byte for byte). Once the process is back the tunnels
must return (within the reconnect budget for an edge restart), and the fds of every process must come back
to their baseline.
"""

from __future__ import annotations

import signal
import time

import pytest

from .harness import RECONNECT_BUDGET, Proc, Rig, Transfer, summary

pytestmark = pytest.mark.e2e

ENDS_WITHIN = 3.0  # s from a SIGKILL to the last affected stream ending (the kernel closes the sockets)
EXITS_WITHIN = 9.0  # s for a drain: drainSeconds (5) and the time to close


def victim_of(r: Rig, role: str) -> Proc:
    return {"edge": r.edge, "sidecar": r.sidecars["A"], "backend": r.backends["A"]}[role]


def affected(role: str, t: Transfer) -> bool:
    return role == "edge" or t.tag == b"A"


def expected_after(r: Rig, role: str, base: dict[str, int]) -> dict[str, int]:
    """fd counts while the victim is down: the others are back to their baseline, less the tunnel sockets
    that led to the victim (a sidecar redialling a dead edge is in flux: only the backends count then)."""
    if role == "edge":
        return {name: n for name, n in base.items() if name.startswith("backend")}
    out = {name: n for name, n in base.items() if not name.startswith(victim_of(r, role).name)}
    if role == "sidecar":
        out["edge"] -= 1  # sidecar A's tunnel
    return out


async def restart(r: Rig, role: str) -> None:
    if role == "edge":
        await r.edge.start()
        took = await r.wait_tunnels(2, within=RECONNECT_BUDGET)
        print(f"tunnels back {took:.2f} s after the edge listened")
    elif role == "sidecar":
        await r.start_sidecar("A")
        await r.wait_tunnels(2, within=5)
    else:
        await r.backends["A"].start()


@pytest.mark.parametrize("role", ["edge", "sidecar", "backend"])
async def test_sigkill_mid_transfer(rig, role: str) -> None:  # type: ignore[no-untyped-def]
    r: Rig = await rig()
    base = await r.settled_counts()
    victim = victim_of(r, role)
    transfers = r.transfers()
    running = await r.in_flight(transfers)
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    done = await running
    hit = [t for t in done if affected(role, t)]
    spared = [t for t in done if not affected(role, t)]
    assert hit and all(not t.intact and t.error != "hung" for t in hit), summary(done)
    last_end = max(t.ended_at for t in hit) - killed_at
    assert last_end < ENDS_WITHIN, summary(done)
    print(f"{role} SIGKILL: {len(hit)} cut streams ended within {last_end:.2f} s, {len(spared)} intact")
    assert all(t.uncorrupted for t in hit), summary(done)
    assert all(t.intact for t in spared) and (role == "edge" or spared), summary(done)
    assert await victim.wait(5) == -signal.SIGKILL
    if role == "sidecar":
        await r.wait_tunnels(1, within=ENDS_WITHIN)
    # the other end of every cut stream was closed too: the fd counts are back, less the victim's
    await r.back_to(expected_after(r, role, base))
    if role == "backend":
        # with the backend down, streams sent to its sidecar end at once; the others are intact
        down = await r.run_all(r.transfers(size=64 << 10, pace=0.0), timeout=10)
        assert all(t.error != "hung" and (t.intact or t.tag == b"") for t in down), summary(down)
        await r.back_to(expected_after(r, role, base))
    await restart(r, role)
    again = await r.run_all(r.transfers())
    assert all(t.intact for t in again) and {t.tag for t in again} == {b"A", b"B"}, summary(again)
    await r.back_to(base)


@pytest.mark.parametrize("role", ["edge", "sidecar", "backend"])
async def test_sigterm_mid_transfer_drains_every_stream(rig, role: str) -> None:  # type: ignore[no-untyped-def]
    r: Rig = await rig()
    base = await r.settled_counts()
    victim = victim_of(r, role)
    transfers = r.transfers()
    running = await r.in_flight(transfers)
    victim.signal(signal.SIGTERM)
    done = await running
    assert all(t.intact for t in done), summary(done)  # a drain loses no stream in flight
    assert await victim.wait(EXITS_WITHIN) == 0, victim.tail()
    if role == "sidecar":
        await r.wait_tunnels(1, within=ENDS_WITHIN)
    await r.back_to(expected_after(r, role, base))
    await restart(r, role)
    again = await r.run_all(r.transfers())
    assert all(t.intact for t in again) and {t.tag for t in again} == {b"A", b"B"}, summary(again)
    await r.back_to(base)
