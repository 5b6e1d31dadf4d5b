"""Peers that stop reading: a backend that accepts and never reads, a client that sends and never reads.

Each is pushed back (its upload stalls well short of 48 MiB: every hop buffers a bounded amount), the 20
checksummed transfers sharing its tunnels arrive intact, and once the stuck client leaves, its stream
ends on both sides and every process is back to its baseline fds.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from mproxy.sockwatch import reset

from .harness import Rig, rss_kib, summary, upload_until_stalled

pytestmark = pytest.mark.e2e

STALLS_BELOW = 48 << 20
IDLE = 3.0  # s: a short limits.idleTimeoutSeconds on both roles, for the never-reading backend
# Bytes in flight when the sidecar's pause reaches the edge land in the sidecar's buffer; on loopback that
# can pass the default 8 MiB soft limit, and the buffer rule then cuts the stream (E_BUFFER) before the
# client gives up. These tests are about what happens once it does, so the sidecar may hold all of it.
ROOMY = {"bufferSoftBytes": STALLS_BELOW + (16 << 20), "bufferHardBytes": 2 * STALLS_BELOW}


async def backend_never_reads(r: Rig, within: float) -> None:
    base = {name: n for name, n in (await r.settled_counts()).items() if name != "backend sink"}
    rss_before = rss_kib(r.edge.pid)
    transfers = r.transfers()
    running = await r.in_flight(transfers)
    writer, sent = await upload_until_stalled(r.sink_port)
    done = await running
    assert sent < STALLS_BELOW, sent
    assert all(t.intact for t in done) and {t.tag for t in done} == {b"A", b"B"}, summary(done)
    grew = rss_kib(r.edge.pid) - rss_before
    # The client gives up with a reset. A plain close would queue its FIN behind the megabytes its kernel
    # still holds for a receive window the edge keeps shut: no peer can see that FIN (docs/reliability.md);
    # only the idle timeout ends such a stream.
    reset(cast(asyncio.Transport, writer.transport))  # typeshed says WriteTransport
    left_at = time.monotonic()
    # the sink backend never reads, so it never sees the close: the sidecar's socket to it is what counts
    await r.back_to(base, within=within)
    print(f"never-reading backend: upload stalled at {sent >> 20} MiB, edge RSS +{grew >> 10} MiB, "
          f"stream ended {time.monotonic() - left_at:.2f} s after the client left")


async def test_backend_that_never_reads(rig) -> None:  # type: ignore[no-untyped-def]
    # The edge stops reading a client its sidecar paused, so a client that leaves while paused is found
    # only by the idle sweep (the xfail below): a short idle timeout bounds the wait here.
    edge = {"limits": {"idleTimeoutSeconds": IDLE}}
    sidecar = {"limits": {"idleTimeoutSeconds": IDLE, **ROOMY}}
    await backend_never_reads(await rig(sink=True, edge=edge, sidecar=sidecar), within=IDLE + 5)


async def test_backend_that_never_reads_with_default_idle_timeout(rig) -> None:  # type: ignore[no-untyped-def]
    # Issue 10 item 7: the edge watches a client it paused (mproxy/sockwatch.py), so its leaving ends the
    # stream both ways within seconds, not at limits.idleTimeoutSeconds (900 s).
    await backend_never_reads(await rig(sink=True, sidecar={"limits": ROOMY}), within=5)


async def test_client_that_sends_and_never_reads(rig) -> None:  # type: ignore[no-untyped-def]
    r: Rig = await rig()
    base = await r.settled_counts()
    rss_before = {p.name: rss_kib(p.pid) for p in (r.edge, *r.sidecars.values())}
    transfers = r.transfers()
    running = await r.in_flight(transfers)
    # the echo backend answers every byte: the client's receive window fills, then every hop back to it
    writer, sent = await upload_until_stalled(r.client_port)
    done = await running
    assert sent < STALLS_BELOW, sent
    assert all(t.intact for t in done) and {t.tag for t in done} == {b"A", b"B"}, summary(done)
    grew = {p.name: (rss_kib(p.pid) - rss_before[p.name]) >> 10 for p in (r.edge, *r.sidecars.values())}
    writer.transport.abort()
    left_at = time.monotonic()
    await r.back_to(base, within=5)
    print(f"never-reading client: upload stalled at {sent >> 20} MiB, RSS growth MiB {grew}, "
          f"stream ended {time.monotonic() - left_at:.2f} s after the client left")
