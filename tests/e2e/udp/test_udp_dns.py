"""Real DNS through edge and sidecar: Debian's dnsmasq as the backend, dig as the client."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conftest import need

from mproxy.metrics.udp import DROP_REASONS

from .harness import PUBLIC_PORT, Stack, free_udp_port

pytestmark = pytest.mark.e2e

NAMES = 1000


def address(i: int) -> str:
    return f"10.77.{i // 250}.{i % 250 + 1}"


@pytest.fixture
async def dnsmasq(tmp_path: Path) -> AsyncIterator[int]:
    """dnsmasq answering h{i}.example.test -> address(i) on a loopback UDP port, nothing else."""
    need(shutil.which("dnsmasq"), "dnsmasq (Debian dnsmasq-base; scripts/install-test-tools)")
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{address(i)} h{i}.example.test\n" for i in range(NAMES)))
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        f"--addn-hosts={hosts}", "--pid-file=", "--user=root", "--group=root", "--log-facility=-",
        "--cache-size=0", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        said = b""
        while b"read " not in (line := await asyncio.wait_for(proc.stderr.readline(), 10)):
            said += line
            assert line, f"dnsmasq exited before it read its hosts file: {said.decode()!r}"
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def dig(port: int, names: list[str], tmp: Path, tag: str) -> list[str]:
    batch = tmp / f"batch-{tag}"
    batch.write_text("".join(f"{name} A\n" for name in names))
    proc = await asyncio.create_subprocess_exec(
        # Two tries: on a loaded 2-core machine the whole loop can stall past one timeout; a datagram
        # mproxy itself dropped would still show in the drop counters, which must stay at 0.
        "dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=2", "+time=5", "-f", str(batch),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().split()


async def test_1000_dns_queries_through_edge_and_sidecar_are_answered_correctly(
        stack: Stack, dnsmasq: int, tmp_path: Path) -> None:
    need(shutil.which("dig"), "dig (Debian bind9-dnsutils; scripts/install-test-tools)")
    dns = {"name": "dns", "match": {"services": ["udp"], "ports": [PUBLIC_PORT]},
           "backend": {"host": "127.0.0.1", "port": dnsmasq}}
    listener = await stack.start([dns])  # idle 30 s: no stream ends (and clashes with a reused port) mid-test
    # Four dig batches of 250 queries; every query comes from its own source port, so each is its own
    # client stream: 1,000 streams opened, 1,000 answers checked name by name. One batch at a time: dig sets
    # SO_REUSEPORT, so the kernel may give two dig processes running at once the same source port, and
    # then delivers both answers to one of them (an ID mismatch for it, a timeout for the other), straight
    # to dnsmasq as much as through the tunnel: 1 run in ~8 failed so.
    chunks = [list(range(k, NAMES, 4)) for k in range(4)]
    answers = [await dig(listener.port, [f"h{i}.example.test" for i in chunk], tmp_path, str(k))
               for k, chunk in enumerate(chunks)]
    for chunk, got in zip(chunks, answers, strict=True):
        assert got == [address(i) for i in chunk]
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    sidecar_reg = stack.sidecar.metrics.registry  # type: ignore[union-attr]
    for r, role in ((reg, "edge"), (sidecar_reg, "sidecar")):
        drops = {reason: r.get_sample_value(f"mproxy_{role}_udp_dropped_total", {"reason": reason})
                 for reason in DROP_REASONS}
        assert not any(drops.values()), (role, {k: v for k, v in drops.items() if v})
    # Every query reached dnsmasq and every answer came back (a dig retry adds one of each).
    both = ("in", "out")
    edge_in, edge_out = (reg.get_sample_value("mproxy_edge_udp_datagrams_total",
                                              {"port": str(PUBLIC_PORT), "direction": d}) for d in both)
    side_in, side_out = (sidecar_reg.get_sample_value("mproxy_sidecar_udp_datagrams_total",
                                                      {"route": "dns", "direction": d}) for d in both)
    assert edge_in == edge_out == side_in == side_out and edge_in is not None and edge_in >= NAMES
    # ... and the tiered stream metrics, per route and client address (under the cardinality guard).
    client = {"route": "dns", "client": "127.0.0.1"}
    # dig picks random source ports: a few queries reuse a port whose stream is still open, so count
    # the streams the edge opened rather than assume 1,000.
    assert stack.edge is not None
    opened = sum(s.mux.streams_opened for s in stack.edge.sessions if s.mux is not None)
    assert 0 < opened <= NAMES
    assert sidecar_reg.get_sample_value("mproxy_sidecar_streams_opened_total", client) == opened
    for tiered, direction in (("received", "in"), ("sent", "out")):
        udp_bytes = sidecar_reg.get_sample_value("mproxy_sidecar_udp_bytes_total",
                                                 {"route": "dns", "direction": direction})
        assert udp_bytes and sidecar_reg.get_sample_value(f"mproxy_sidecar_{tiered}_bytes_total",
                                                          client) == udp_bytes
