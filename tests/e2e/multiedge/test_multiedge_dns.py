"""3 edge processes behind one hostname that resolves to all of them (a real DNS server), 2 sidecars:
every sidecar holds a tunnel to every edge, so clients on any edge reach the backend; an edge killed with
SIGKILL costs no new client on the others, and its replacement is picked up."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from .harness import EDGE_HOSTS, HOSTNAME, Cluster, roundtrip, spread_clients, until

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


async def test_sidecars_follow_a_scale_up_and_down(cluster: Cluster) -> None:
    await cluster.echo()
    dns = await cluster.dns(list(EDGE_HOSTS[:2]))
    edges = [await cluster.edge(host, f"edge-{i}", replicas=2) for i, host in enumerate(EDGE_HOSTS[:2])]
    url = f"ws://{HOSTNAME}:{cluster.tunnel_port}/tunnel"
    sidecar = await cluster.sidecar("A", url, [f"127.0.0.1:{dns.port}"])
    await cluster.wait_tunnels(edges, per_edge=1)

    # Scale 2 -> 3: the new edge announces 3 replicas and appears in DNS.
    third = await cluster.edge(EDGE_HOSTS[2], "edge-2", replicas=3)
    dns.addresses = list(EDGE_HOSTS)
    await cluster.wait_tunnels([*edges, third], per_edge=1)
    assert await spread_clients([*edges, third], 90) == {}

    # Scale 3 -> 2: the third edge drains away and leaves DNS; the survivors announce 2, so the sidecar
    # drops the address and its third slot.
    third.proc.terminate()
    await third.proc.wait()
    dns.addresses = list(EDGE_HOSTS[:2])

    async def scaled_down() -> bool:
        state = await sidecar.status()
        edges_state = state["edges"][0]
        live = [t for t in state["tunnels"] if t["state"] != "stopped"]
        return bool(edges_state["addresses"] == list(EDGE_HOSTS[:2]) and edges_state["expectedEdges"] == 2
                    and edges_state["connectedEdges"] == 2 and len(live) == 2)

    await until(scaled_down, 10, "the sidecar to follow the scale-down")
    assert await spread_clients(edges, 60) == {}


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
