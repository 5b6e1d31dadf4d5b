"""The same 3 edges behind one load-balanced address (a skewed TCP balancer in the test): sidecars dial
again until they hold a tunnel to every announced edge, an edge they already hold answers 409 before
granting anything, and a telebit device (device.js) dialling through the balancer still works."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import aiohttp
import pytest

from .harness import EDGE_HOSTS, PUBLIC_PORT, Cluster, spread_clients, stop_proc, until

pytestmark = pytest.mark.e2e

DEVICE = Path(__file__).resolve().parents[2] / "interop" / "node" / "device.js"


def duplicates(metrics: str) -> int:
    found = re.search(r'mproxy_edge_tunnel_rejects_total\{reason="duplicate_edge"\} (\S+)', metrics)
    assert found, "no duplicate_edge series"
    return int(float(found.group(1)))


async def test_sidecars_dial_through_a_balancer_until_they_hold_every_edge(cluster: Cluster) -> None:
    await cluster.echo()
    edges = [await cluster.edge(host, f"edge-{i}") for i, host in enumerate(EDGE_HOSTS)]
    lb = await cluster.balancer([(e.host, cluster.tunnel_port) for e in edges])
    url = f"ws://127.0.0.1:{lb.port}/tunnel"
    sidecars = [await cluster.sidecar(label, url) for label in "AB"]
    await cluster.wait_tunnels(edges, per_edge=2)
    for sidecar in sidecars:
        state = (await sidecar.status())["edges"][0]
        assert state["edges"] == {"edge-0": 1, "edge-1": 1, "edge-2": 1}, state
    # Backoff, not a storm: a handful of duplicate landings per sidecar, each refused before any grant.
    refused = sum([duplicates(await e.metrics()) for e in edges])
    print(f"duplicate dials refused: {refused}")
    assert refused <= 20, f"{refused} duplicate dials"
    started = time.monotonic()
    assert await spread_clients(edges, 1000) == {}
    print(f"1000 clients over 3 edges behind the balancer: {time.monotonic() - started:.2f} s")

    edges[1].kill()
    await edges[1].proc.wait()
    assert await spread_clients([edges[0], edges[2]], 200) == {}


async def test_an_edge_refuses_a_sidecar_that_already_holds_it(cluster: Cluster) -> None:
    edge = await cluster.edge(EDGE_HOSTS[0], "edge-0", replicas=3)
    url = f"http://{edge.host}:{cluster.tunnel_port}/tunnel"
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Mproxy-Have-Edges": "edge-9,edge-0"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 409
        assert resp.headers["X-Mproxy-Edge-Id"] == "edge-0"
        assert resp.headers["X-Mproxy-Edge-Replicas"] == "3"
        assert (await resp.json())["code"] == "E_DUPLICATE"
    assert duplicates(await edge.metrics()) == 1
    assert (await edge.status())["tunnels"] == []


@pytest.mark.interop
async def test_a_telebit_device_next_to_sidecars_on_three_edges(cluster: Cluster, node_bin: str) -> None:
    """device.js dials through the balancer into 3 edges that announce replicas, while 2 of our sidecars
    hold every edge: it ignores the identity headers, sends no have-list so no edge refuses it as a
    duplicate, and clients on its edge are served by it and the sidecars alike."""
    echo_port = await cluster.echo()
    edges = [await cluster.edge(host, f"edge-{i}") for i, host in enumerate(EDGE_HOSTS)]
    lb = await cluster.balancer([(e.host, cluster.tunnel_port) for e in edges])
    url = f"ws://127.0.0.1:{lb.port}/tunnel"
    for label in "AB":
        await cluster.sidecar(label, url)
    await cluster.wait_tunnels(edges, per_edge=2)
    tok = (cluster.tmp / "token").read_text()
    proc = await asyncio.create_subprocess_exec(
        node_bin, str(DEVICE), "--url", url, "--token", tok,
        "--token-in", "handshake", "--port", f"{PUBLIC_PORT}={echo_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ})
    cluster.stack.push_async_callback(stop_proc, proc)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, "device.js exited"
        if json.loads(line).get("event") == "ready":
            break

    async def held() -> bool:
        held: int = sum([(await e.status())["ports"].get(str(PUBLIC_PORT), 0) for e in edges])
        return held == 7

    await until(held, 10, "the device's tunnel next to the 6 sidecar tunnels")
    holder = [e for e in edges if (await e.status())["ports"].get(str(PUBLIC_PORT)) == 3]
    assert len(holder) == 1
    assert sum([duplicates(await e.metrics()) for e in edges]) <= 20
    assert await spread_clients(holder, 60) == {}
    assert proc.returncode is None, "device.js exited"
    # Least-streams balancing spreads them over all 3 tunnels there, so the device carried some.
    assert all(t["bytesSent"] > 0 for t in (await holder[0].status())["tunnels"])
