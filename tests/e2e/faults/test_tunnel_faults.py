"""The tunnel's TCP connection between sidecar A and the edge, through a proxy the test controls:
blackholed (no byte moves, no FIN: only heartbeats can tell), then reset (an RST to both ends).

The streams on that tunnel must end on both sides (within the heartbeat timeout for a blackhole, at
once for a reset), the streams on B's tunnel must arrive intact, A must be back within the reconnect
budget, and every process's fds must return to the baseline.
"""

from __future__ import annotations

import time

import pytest

from .harness import HEARTBEAT, RECONNECT_BUDGET, Rig, TcpProxy, Transfer, summary

pytestmark = pytest.mark.e2e


def a_cut_b_intact(done: list[Transfer]) -> list[Transfer]:
    """Every transfer on A's tunnel was cut (never hung, never corrupted) and every one on B's arrived
    intact; returns A's."""
    hit = [t for t in done if t.tag == b"A"]
    spared = [t for t in done if t.tag == b"B"]
    assert hit and spared and len(hit) + len(spared) == len(done), summary(done)
    assert all(not t.intact and t.error != "hung" and t.uncorrupted for t in hit), summary(done)
    assert all(t.intact for t in spared), summary(done)
    return hit


def first_tunnel_still_up(r: Rig, proxy: TcpProxy) -> None:
    """What a fault must hit: sidecar A's first tunnel, the one its streams are on. A second connection
    through the proxy means the tunnel was found dead and redialled before the fault (the rig stalled
    past the heartbeat timeout), and the fault would then measure the wrong tunnel."""
    assert proxy.accepted == 1 and proxy.open == 1, (
        f"sidecar A dialled {proxy.accepted} times, {proxy.open} open, before the fault: its tunnel was "
        f"redialled early\n{r.sidecars['A'].tail()}")


async def blackhole_a(r: Rig) -> dict[str, int]:
    """Blackhole A's tunnel mid-transfer; check both sides found it dead and A is back; the baseline fds."""
    base = await r.settled_counts()
    # 70 chunks of 64 KiB, 0.05 s apart: 3.5 s or more, so still running when the heartbeat fires, and
    # A's 10 streams offer ~12 MB/s, so the ~8 MB of socket buffers between the edge and the blackholed
    # proxy are full well before then: the edge's tunnel writer is blocked when the tunnel is found dead
    transfers = r.transfers(size=70 << 16, chunk=64 << 10)
    running = await r.in_flight(transfers)
    proxy = r.proxies["A"]
    first_tunnel_still_up(r, proxy)
    assert proxy.blackhole() == 1
    holed_at = time.monotonic()
    done = await running
    dead_after = max(t.ended_at for t in a_cut_b_intact(done)) - holed_at
    assert dead_after < HEARTBEAT["timeoutSeconds"] + 2, summary(done)
    await r.wait_tunnels(2, within=HEARTBEAT["timeoutSeconds"] + RECONNECT_BUDGET)
    assert proxy.accepted == 2  # sidecar A redialled once through the proxy
    redial = proxy.accepted_at[1] - holed_at
    assert redial < HEARTBEAT["timeoutSeconds"] + RECONNECT_BUDGET
    print(f"blackhole: streams cut after {dead_after:.2f} s, sidecar redialled after {redial:.2f} s")
    again = await r.run_all(r.transfers())
    assert all(t.intact for t in again) and {t.tag for t in again} == {b"A", b"B"}, summary(again)
    return base


async def test_blackholed_tunnel_is_found_dead_redialled_and_released(rig) -> None:  # type: ignore[no-untyped-def]
    r: Rig = await rig()
    base = await blackhole_a(r)
    # every process, the edge included, closed the dead tunnel's socket (the edge aborts it: a graceful
    # close would wait forever to flush megabytes to a peer that never reads) and its streams' connections
    await r.back_to(base)
    assert "dead_peer" in r.edge.log.read_text()  # the edge says why it closed the tunnel


async def test_reset_tunnel_cuts_its_streams_at_once_and_redials(rig) -> None:  # type: ignore[no-untyped-def]
    # long heartbeats: only the RST itself can end these streams within the bound below
    slow = {"heartbeat": {"intervalSeconds": 5, "timeoutSeconds": 20}}
    r: Rig = await rig(edge=slow, sidecar=slow)
    base = await r.settled_counts()
    transfers = r.transfers()
    running = await r.in_flight(transfers)
    proxy = r.proxies["A"]
    first_tunnel_still_up(r, proxy)
    assert proxy.reset() == 1
    reset_at = time.monotonic()
    done = await running
    cut_after = max(t.ended_at for t in a_cut_b_intact(done)) - reset_at
    assert cut_after < 2.0, summary(done)
    await r.wait_tunnels(2, within=RECONNECT_BUDGET)
    assert proxy.accepted == 2
    redial = proxy.accepted_at[1] - reset_at
    assert redial < RECONNECT_BUDGET
    print(f"reset: streams cut after {cut_after:.2f} s, "
          f"sidecar redialled after {redial:.2f} s")
    again = await r.run_all(r.transfers())
    assert all(t.intact for t in again) and {t.tag for t in again} == {b"A", b"B"}, summary(again)
    await r.back_to(base)
