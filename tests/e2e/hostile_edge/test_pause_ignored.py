"""Issue 10 items 2 and 5: a peer that ignores `pause` cannot make the edge or the sidecar hold unbounded
bytes for a socket that does not read. Real `mproxy edge` / `mproxy sidecar` processes, measured from /proc.
"""

from __future__ import annotations

import asyncio

import pytest

from mproxy.tunnel.mux import Stream, StreamHandler

from .harness import (
    Firehose,
    HostileEdge,
    HostileTunnel,
    MiB,
    abort_all,
    pause_reading,
    silent_client,
    start_edge,
    start_sidecar,
)

pytestmark = pytest.mark.e2e


async def _edge_with_firehoses(tmp_path, stack, n: int, total: int,  # type: ignore[no-untyped-def]
                               limits: dict[str, int] | None = None) -> tuple[object, list[Firehose]]:
    edge = await start_edge(tmp_path, limits=limits)
    stack.push_async_callback(edge.stop)
    hoses: list[Firehose] = []

    def on_stream(stream: Stream) -> StreamHandler:
        hose = Firehose(stream, total)
        hoses.append(hose)
        return hose

    tunnel = await HostileTunnel(edge, on_stream).start()
    stack.push_async_callback(tunnel.close)
    clients: list[object] = []
    stack.callback(clients.clear)
    for _ in range(n):
        _, writer = await silent_client(edge.listener("tcp"))
        stack.callback(writer.transport.abort)
        clients.append(writer)  # a StreamWriter that is collected closes its socket
    async with asyncio.timeout(10):
        while len(hoses) < n:
            await asyncio.sleep(0.01)
    return edge, hoses


async def test_edge_cuts_a_tunnel_that_ignores_pause(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # Before: the edge queued all 512 MiB for the client (2.5 GB in 24 s in the attack run), no cut.
    edge, (hose,) = await _edge_with_firehoses(tmp_path, stack, 1, 512 * MiB)
    base = edge.rss_mb()  # type: ignore[attr-defined]
    closed_at = await asyncio.wait_for(asyncio.shield(hose.closed), 20)
    assert hose.error is not None and hose.error[0] == "E_BUFFER", hose.error
    assert hose.sent < 200 * MiB, f"{hose.sent / MiB:.0f} MiB went out before the cut"
    grown = edge.rss_mb() - base  # type: ignore[attr-defined]
    assert grown < 120, f"edge RSS grew {grown:.0f} MB"
    assert closed_at > 0
    assert sum([await _cuts(edge, limit) for limit in ("hard", "soft", "tunnel")]) == 1


async def test_edge_cuts_a_burst_once_the_tunnel_goes_quiet(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # 6 streams x 24 MiB (over the 8 MiB soft limit, under the 64 MiB hard one), then silence: the rule
    # must still cut each once its pause is 2 s old. Before: 0 cuts, held until the idle timeout.
    edge, hoses = await _edge_with_firehoses(tmp_path, stack, 6, 24 * MiB)
    loop = asyncio.get_running_loop()
    ends = await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.done_sending) for h in hoses)), 20)
    quiet = max(ends)
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.closed) for h in hoses)), 2.0 + 3.0)
    assert [h.error[0] if h.error else None for h in hoses] == ["E_BUFFER"] * 6
    assert loop.time() - quiet < 5.0
    # 24 MiB each is under the 64 MiB hard limit and 6 x 24 under the 256 MiB tunnel cap: all soft cuts
    assert [await _cuts(edge, limit) for limit in ("hard", "soft", "tunnel")] == [0, 6, 0]


async def test_edge_caps_all_buffered_bytes_of_one_tunnel(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # Each stream stays under its own soft limit (16 MiB), but 6 x 12 MiB exceed the tunnel's 32 MiB:
    # the biggest are cut until the tunnel is under it.
    limits = {"bufferSoftBytes": 16 * MiB, "bufferGraceSeconds": 60, "tunnelBufferBytes": 32 * MiB}
    edge, hoses = await _edge_with_firehoses(tmp_path, stack, 6, 12 * MiB, limits)
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.done_sending) for h in hoses)), 20)
    await asyncio.sleep(1.0)
    cut = [h for h in hoses if h.error and h.error[0] == "E_BUFFER"]
    assert len(cut) >= 2, [h.error for h in hoses]
    assert len(cut) < 6, "every stream was cut; the cap should only shed down to 32 MiB"
    assert [await _cuts(edge, limit) for limit in ("hard", "soft", "tunnel")] == [0, 0, len(cut)]


async def _cuts(edge: object, limit: str) -> float:
    """mproxy_edge_buffer_cuts_total{limit}: before, the edge counted its E_BUFFER cuts nowhere."""
    return await edge.metric("mproxy_edge_buffer_cuts_total", limit=limit)  # type: ignore[attr-defined, no-any-return]


class _Never:
    """A backend that accepts and never reads."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pause_reading(writer)
        self.writers.append(writer)


async def test_sidecar_cuts_a_burst_once_the_edge_goes_quiet(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # 4 streams x 32 MiB to a backend that never reads, then silence. Before: 30 streams x 60 MiB were held
    # 20 s+ with 0 cuts (the check ran only when more data came).
    never = _Never()
    server = await asyncio.start_server(never, "127.0.0.1", 0)
    stack.callback(server.close)
    edge = await HostileEdge().start()
    stack.push_async_callback(edge.close)
    sidecar = await start_sidecar(tmp_path, edge.port, server.sockets[0].getsockname()[1])
    stack.push_async_callback(sidecar.stop)
    await asyncio.wait_for(edge.connected.wait(), 20)
    hoses: list[Firehose] = []

    def make(stream: Stream) -> Firehose:
        hoses.append(Firehose(stream, 32 * MiB))  # past the 8 MiB soft limit plus ~10 MB kernel buffers
        return hoses[-1]

    for i in range(4):
        edge.open(i, make)
    loop = asyncio.get_running_loop()
    ends = await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.done_sending) for h in hoses)), 20)
    quiet = max(ends)
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.closed) for h in hoses)), 2.0 + 3.0)
    assert [h.error[0] if h.error else None for h in hoses] == ["E_BUFFER"] * 4
    assert loop.time() - quiet < 5.0
    for w in never.writers:
        w.transport.abort()


async def _sidecar_with_firehoses(tmp_path, stack, n: int, total: int,  # type: ignore[no-untyped-def]
                                  limits: dict[str, object]) -> list[Firehose]:
    never = _Never()
    server = await asyncio.start_server(never, "127.0.0.1", 0)
    stack.callback(server.close)
    stack.callback(abort_all, never.writers)
    edge = await HostileEdge().start()
    stack.push_async_callback(edge.close)
    sidecar = await start_sidecar(tmp_path, edge.port, server.sockets[0].getsockname()[1], limits=limits)
    stack.push_async_callback(sidecar.stop)
    await asyncio.wait_for(edge.connected.wait(), 20)
    hoses: list[Firehose] = []

    def make(stream: Stream) -> Firehose:
        hoses.append(Firehose(stream, total))
        return hoses[-1]

    for i in range(n):
        edge.open(i, make)
    return hoses


async def test_sidecar_buffer_limits_are_configurable(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # bufferHardBytes 4 MiB with a 60 s grace: only the configured hard limit can cut within 10 s (the
    # default one is 64 MiB). Before: the sidecar refused these keys (its limits were not configurable).
    hoses = await _sidecar_with_firehoses(tmp_path, stack, 1, 48 * MiB, {
        "bufferSoftBytes": 2 * MiB, "bufferHardBytes": 4 * MiB, "bufferGraceSeconds": 60})
    await asyncio.wait_for(asyncio.shield(hoses[0].closed), 10)
    assert hoses[0].error is not None and hoses[0].error[0] == "E_BUFFER", hoses[0].error
    assert "4194304" in hoses[0].error[1]  # the hard limit's message
    assert hoses[0].sent < 40 * MiB


async def test_sidecar_tunnel_buffer_cap_is_configurable(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    # 6 x 12 MiB under a 16 MiB soft limit (grace 60 s), a 32 MiB tunnel cap: some, not all, are cut.
    hoses = await _sidecar_with_firehoses(tmp_path, stack, 6, 12 * MiB, {
        "bufferSoftBytes": 16 * MiB, "bufferGraceSeconds": 60, "tunnelBufferBytes": 32 * MiB})
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(h.done_sending) for h in hoses)), 20)
    await asyncio.sleep(1.0)
    cut = [h for h in hoses if h.error and h.error[0] == "E_BUFFER"]
    assert 1 <= len(cut) < 6, [h.error for h in hoses]
    assert all("held the most" in h.error[1] for h in cut if h.error)
