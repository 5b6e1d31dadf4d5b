"""3 edge processes behind one hostname that resolves to all of them (a real DNS server), 2 sidecars:
every sidecar holds a tunnel to every edge, so clients on any edge reach the backend; an edge killed with
SIGKILL costs no new client on the others, and its replacement is picked up."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest

from .harness import EDGE_HOSTS, HOSTNAME, SCALE_HOSTS, Cluster, roundtrip, spread_clients, until

pytestmark = pytest.mark.e2e


async def test_sidecars_reach_every_edge_behind_one_hostname(cluster: Cluster) -> None:
    await cluster.echo()
    dns = await cluster.dns(list(EDGE_HOSTS))
    edges = [await cluster.edge(host, f"edge-{i}") for i, host in enumerate(EDGE_HOSTS)]
    url = f"ws://{HOSTNAME}:{cluster.tunnel_port}/tunnel"
    sidecars = [await cluster.sidecar(label, url, [f"127.0.0.1:{dns.port}"]) for label in "AB"]
    await cluster.wait_tunnels(edges, per_edge=2)
    state = (await sidecars[0].status())["edges"][0]
    assert state["expectedEdges"] == 3 and state["connectedEdges"] == 3, state
    assert state["addresses"] == list(EDGE_HOSTS)
    assert state["edges"] == {"edge-0": 1, "edge-1": 1, "edge-2": 1}
    metrics = await sidecars[0].metrics()
    assert f'mproxy_sidecar_edges_connected{{edge="{url}"}} 3.0' in metrics
    assert f'mproxy_sidecar_edges_expected{{edge="{url}"}} 3.0' in metrics

    started = time.monotonic()
    assert await spread_clients(edges, 1000) == {}
    print(f"1000 clients over 3 edges: {time.monotonic() - started:.2f} s")

    # One edge dies mid-traffic: a stream on a survivor keeps its bytes, no new client is refused.
    payload = bytes(range(256)) * 16384  # 4 MiB
    long_stream = asyncio.ensure_future(roundtrip(edges[0].host, edges[0].client_port, payload, timeout=30))
    await asyncio.sleep(0.05)
    edges[2].kill()
    await edges[2].proc.wait()
    assert await spread_clients(edges[:2], 200) == {}
    assert hashlib.sha256(await long_stream).hexdigest() == hashlib.sha256(payload).hexdigest()

    async def missing_one() -> bool:
        state = (await sidecars[1].status())["edges"][0]
        return bool(state["connectedEdges"] == 2 and state["expectedEdges"] == 3)

    await until(missing_one, 10, "the sidecar to see 2 of 3 edges")
    assert 'mproxy_sidecar_edges_connected{edge="' + url + '"} 2.0' in await sidecars[1].metrics()

    # Its replacement (a new pod, a new id, the same address) is found without touching the sidecars.
    replacement = await cluster.edge(EDGE_HOSTS[2], "edge-2b")
    live = [edges[0], edges[1], replacement]
    await cluster.wait_tunnels(live, per_edge=2)
    assert await spread_clients(live, 150) == {}

    # One sidecar dies (SIGKILL): the edges drop its tunnels at once, every new client goes to the other.
    sidecars[0].proc.kill()
    await sidecars[0].proc.wait()
    await cluster.wait_tunnels(live, per_edge=1)
    assert await spread_clients(live, 150) == {}


async def test_two_sidecars_follow_edges_scaled_3_to_5_to_2(cluster: Cluster) -> None:
    """Scale out by adding pods that announce the new count (and appear in DNS); scale in the way the
    chart does with a static `edge.replicas`: the removed edges go, the survivors roll to the new count
    (same address and id, a new process). Both sidecars' /status and gauges follow every step."""
    await cluster.echo()
    dns = await cluster.dns(list(SCALE_HOSTS[:3]))
    edges = {h: await cluster.edge(h, f"edge-{i}", replicas=3) for i, h in enumerate(SCALE_HOSTS[:3])}
    url = f"ws://{HOSTNAME}:{cluster.tunnel_port}/tunnel"
    sidecars = [await cluster.sidecar(label, url, [f"127.0.0.1:{dns.port}"]) for label in "AB"]

    async def following(hosts: tuple[str, ...]) -> bool:
        ids = {edges[h].id: 1 for h in hosts}
        for sidecar in sidecars:
            try:
                state, metrics = await sidecar.status(), await sidecar.metrics()
            except aiohttp.ClientError:  # not listening yet
                return False
            pool = state["edges"][0]
            live = [t for t in state["tunnels"] if t["state"] != "stopped"]
            if (pool["addresses"], pool["expectedEdges"], pool["connectedEdges"], pool["edges"],
                    len(live)) != (list(hosts), len(hosts), len(hosts), ids, len(hosts)):
                return False
            for gauge in ("connected", "expected"):
                if f'mproxy_sidecar_edges_{gauge}{{edge="{url}"}} {len(hosts)}.0' not in metrics:
                    return False
        return True

    await until(lambda: following(SCALE_HOSTS[:3]), 15, "both sidecars on 3 of 3 edges")
    await cluster.wait_tunnels(list(edges.values()), per_edge=2)

    # 3 -> 5: two new pods announce 5 and appear in DNS.
    for i, host in enumerate(SCALE_HOSTS[3:], start=3):
        edges[host] = await cluster.edge(host, f"edge-{i}", replicas=5)
    dns.addresses = list(SCALE_HOSTS)
    await until(lambda: following(SCALE_HOSTS), 15, "both sidecars on 5 of 5 edges")
    await cluster.wait_tunnels(list(edges.values()), per_edge=2)
    assert await spread_clients(list(edges.values()), 200) == {}

    # 5 -> 2: three edges drain away and leave DNS, the two survivors roll to announce 2.
    kept = SCALE_HOSTS[:2]
    dns.addresses = list(kept)
    for host in SCALE_HOSTS[2:]:
        edges[host].proc.terminate()
    for host in SCALE_HOSTS[2:]:
        await edges.pop(host).proc.wait()
    for i, host in enumerate(kept):
        edges[host].proc.terminate()
        await edges[host].proc.wait()
        edges[host] = await cluster.edge(host, f"edge-{i}", replicas=2)
    await until(lambda: following(kept), 15, "both sidecars on 2 of 2 edges")
    await cluster.wait_tunnels(list(edges.values()), per_edge=2)
    assert await spread_clients(list(edges.values()), 100) == {}


async def test_wss_by_hostname_checks_the_certificate_against_the_hostname(cluster: Cluster) -> None:
    """Each dial goes to one address, but TLS still sends SNI and verifies the certificate for the URL's
    hostname: a certificate for edges.test passes, one for another name is refused."""
    from mproxy.ca import CertificateAuthority

    await cluster.echo()
    dns = await cluster.dns(list(EDGE_HOSTS[:2]))
    ca = CertificateAuthority.create("multi-edge CA")
    ca_file = str(ca.write_cert(cluster.tmp / "ca.pem"))
    good = tuple(str(p) for p in ca.issue([HOSTNAME]).write(cluster.tmp, "good"))
    wrong = tuple(str(p) for p in ca.issue(["other.test"]).write(cluster.tmp, "wrong"))
    edges = [await cluster.edge(EDGE_HOSTS[0], "edge-0", replicas=2, tls=(good[0], good[1])),
             await cluster.edge(EDGE_HOSTS[1], "edge-1", replicas=2, tls=(wrong[0], wrong[1]))]
    url = f"wss://{HOSTNAME}:{cluster.tunnel_port}/tunnel"
    await cluster.sidecar("A", url, [f"127.0.0.1:{dns.port}"], ca_file=ca_file)
    await cluster.wait_tunnels(edges[:1], per_edge=1)  # the right name: SNI and the check used edges.test
    log = cluster.tmp / "sidecar-A.log"

    async def refused() -> bool:
        return "certificate verify failed" in log.read_text()

    await until(refused, 10, "the certificate for another name to be refused")
    assert (await edges[1].status())["tunnels"] == []
    assert await spread_clients(edges[:1], 20) == {}
