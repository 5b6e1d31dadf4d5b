"""Forwarding between edges (issue 12, the safety net): a sidecar holds a tunnel to edge A only; TLS (SNI),
HTTP (Host) and TCP (port) clients landing on edge B reach the backend through A, which sees the original
client address (a backend that reads the sidecar's PROXY header says who connected). The forward port
takes nothing but a header signed by a peer, a forwarded client never hops again, and a restarted edge
that no sidecar reached yet forwards its clients instead of refusing them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
import ssl
import time
from typing import Any

import aiohttp
import pytest

from mproxy import proxyproto
from mproxy.edge.auth import mint
from mproxy.edge.peer_auth import FORWARD_TLV, ForwardClaim, PeerKeys

from .harness import EDGE_HOSTS, HOSTNAME, PUBLIC_PORT, SECRET, Cluster, Edge, until

pytestmark = pytest.mark.e2e

NAME = "fwd.test"
CLIENT_HOST = "127.0.0.9"  # the clients' own source address, which A must see


async def whoami(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend behind `proxyProtocol: v1`: answers "FROM <address> <port>\\n", then echoes."""
    try:
        line = await reader.readline()
        parts = line.decode().split()
        writer.write(f"FROM {parts[2]} {parts[4]}\n".encode() if len(parts) == 6 else b"FROM ?\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, IndexError):
        pass
    finally:
        writer.close()


@functools.cache
def client_hello(name: str) -> bytes:
    """The first flight of a real TLS client for `name` (the edge routes by its SNI)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def exchange(host: str, port: int, payload: bytes, timeout: float = 10.0) -> tuple[bytes, int]:
    """Send `payload` from CLIENT_HOST; (everything read until the echo is complete or EOF, our port)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(CLIENT_HOST, 0)), timeout)
    own_port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(payload)
        got = bytearray()
        async with asyncio.timeout(timeout):
            while not got.endswith(payload):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
        return bytes(got), own_port
    finally:
        writer.close()


async def refused(host: str, port: int, payload: bytes) -> bool:
    """A raw TCP client is refused by a close; with its bytes still unread the kernel makes that a RST."""
    try:
        got, _ = await exchange(host, port, payload)
    except ConnectionResetError:
        return True
    return got == b""


def metric(text: str, name: str, result: str) -> float:
    found = re.search(rf'^{name}{{result="{result}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def start_pair(cluster: Cluster, *, refresh: float = 0.2, replicas: int = 1,
                     hosts: tuple[str, ...] = EDGE_HOSTS[:2], **extra: Any) -> tuple[list[Edge], Any]:
    """Edges on `hosts` that find each other through the test's DNS server (peers.hostname); `extra`
    peers settings."""
    dns = await cluster.dns(list(hosts))
    peers = {"hostname": HOSTNAME, "nameservers": [f"127.0.0.1:{dns.port}"], "refreshSeconds": refresh,
             "expireSeconds": max(1.0, 5 * refresh), "resolveSeconds": 0.5, **extra}
    edges = [await cluster.edge(host, f"edge-{i}", replicas=replicas, kinds=("tls", "http"),
                                peers={**peers, "listen": f"{host}:0"})
             for i, host in enumerate(hosts)]
    return edges, dns


async def start_sidecar(cluster: Cluster, url: str, label: str = "A",
                        nameservers: list[str] | None = None) -> Any:
    server = await asyncio.start_server(whoami, "127.0.0.1", 0)
    cluster.stack.callback(server.close)
    backend = {"host": "127.0.0.1", "port": server.sockets[0].getsockname()[1], "proxyProtocol": "v1"}
    web = {"services": ["https", "http"], "hostnames": [NAME]}
    routes = [{"name": "web", "match": web, "backend": backend},
              {"name": "raw", "match": {"services": ["tcp"]}, "backend": backend}]
    token = mint(SECRET, domains=[NAME], ports=[PUBLIC_PORT])
    return await cluster.sidecar(label, url, nameservers, routes=routes, token=token)


async def peer_knows(edge: Edge, peer_id: str) -> bool:
    peers = (await edge.status()).get("peering", {}).get("peers", [])
    return any(p.get("id") == peer_id and PUBLIC_PORT in p.get("ports", []) and NAME in p.get("domains", [])
               for p in peers)


def payloads(i: int) -> dict[str, bytes]:
    return {"tls": client_hello(NAME),
            "http": f"GET /{i} HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode(),
            "tcp": f"raw client {i}\n".encode() * 8}


async def test_clients_on_the_edge_without_the_tunnel_reach_the_backend(cluster: Cluster) -> None:
    (a, b), _ = await start_pair(cluster)
    await start_sidecar(cluster, f"ws://{a.host}:{cluster.tunnel_port}/tunnel")
    await until(lambda: _granted(a), 15, "the sidecar's tunnel on A")
    granted = time.monotonic()
    await until(lambda: peer_knows(b, a.id), 10, "B to learn A's grants")
    print(f"a new grant on A visible on B after {time.monotonic() - granted:.2f} s (refreshSeconds 0.2)")
    assert (await b.status())["ports"] == {}  # B holds no tunnel: every client below is forwarded

    gate = asyncio.Semaphore(20)

    async def one(i: int, kind: str) -> str | None:
        payload = payloads(i)[kind]
        async with gate:
            try:
                got, port = await exchange(b.host, b.ports[kind], payload)
            except OSError as exc:
                return f"{kind} {i}: {exc!r}"
        want = f"FROM {CLIENT_HOST} {port}\n".encode() + payload
        return None if got == want else f"{kind} {i}: {got[:80]!r}"

    failures = [f for f in await asyncio.gather(*(one(i, kind) for i in range(40)
                                                for kind in ("tls", "http", "tcp"))) if f]
    assert failures == [], "\n".join(failures)

    # One large stream through the forward keeps every byte, both ways.
    big = bytes(range(256)) * 8192  # 2 MiB
    got, port = await exchange(b.host, b.ports["tcp"], big, timeout=20)
    head = f"FROM {CLIENT_HOST} {port}\n".encode()
    assert got[:len(head)] == head
    assert hashlib.sha256(got[len(head):]).digest() == hashlib.sha256(big).digest()

    assert metric(await b.metrics(), "mproxy_edge_forwards_out_total", "ok") == 121
    a_metrics = await a.metrics()
    assert metric(a_metrics, "mproxy_edge_forwards_in_total", "ok") == 121
    assert metric(a_metrics, "mproxy_edge_forwards_out_total", "ok") == 0
    assert "mproxy_edge_peers_reachable 1.0" in a_metrics and "mproxy_edge_peers_known 1.0" in a_metrics

    # B drains (SIGTERM, drainSeconds 1): a client it forwarded finishes its exchange first.
    reader, writer = await asyncio.open_connection(b.host, b.ports["tcp"], local_addr=(CLIENT_HOST, 0))
    writer.write(b"before\n")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"FROM ")
    assert await asyncio.wait_for(reader.readline(), 10) == b"before\n"
    b.proc.terminate()
    await asyncio.sleep(0.3)
    writer.write(b"during the drain\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"during the drain\n"
    writer.close()
    assert await asyncio.wait_for(b.proc.wait(), 10) == 0


async def _granted(edge: Edge) -> bool:
    return bool((await edge.status())["ports"].get(str(PUBLIC_PORT)))


def forged(source: tuple[str, int], destination: tuple[str, int], keys: PeerKeys, *, when: float,
           kind: str = "tcp", name: str = "", sender: str = "edge-x", flip: bool = False) -> bytes:
    claim = ForwardClaim(kind, PUBLIC_PORT, name, sender, int(when * 1000))
    tlv = bytearray(keys.forward_tlv(source, destination, claim))
    if flip:
        tlv[-1] ^= 1
    return proxyproto.encode_v2(source, destination, [(FORWARD_TLV, bytes(tlv))])


async def answer_of(host: str, port: int, data: bytes) -> bytes:
    """What the forward port sends back to `data` (b"" when it closes without a word)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        async with asyncio.timeout(5):
            return await reader.read(1)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_the_forward_port_refuses_forged_stale_and_replayed_headers(cluster: Cluster) -> None:
    (a, b), _ = await start_pair(cluster)
    await start_sidecar(cluster, f"ws://{a.host}:{cluster.tunnel_port}/tunnel")
    await until(lambda: _granted(a), 15, "the sidecar's tunnel on A")
    port = (await a.status())["peering"]["forwardPort"]
    src, dst = ("203.0.113.7", 40000), (b.host, PUBLIC_PORT)
    good, other = PeerKeys(SECRET), PeerKeys(b"not the edges' secret")
    now = time.time()
    payload = b"hello\n"

    assert await answer_of(a.host, port, forged(src, dst, other, when=now) + payload) == b""  # wrong key
    assert await answer_of(a.host, port, forged(src, dst, good, when=now, flip=True) + payload) == b""
    assert await answer_of(a.host, port, forged(src, dst, good, when=now - 60) + payload) == b""  # stale
    assert await answer_of(a.host, port, proxyproto.encode_v2(src, dst) + payload) == b""  # no TLV
    assert await answer_of(a.host, port, b"GET / HTTP/1.1\r\n\r\n") == b""  # no PROXY header at all
    # A valid header once is a client; the same bytes again are a replay.
    valid = forged(src, dst, good, when=now) + payload
    assert await answer_of(a.host, port, valid) == b"\x00"
    assert await answer_of(a.host, port, valid) == b""
    # The addresses are covered by the MAC: the same TLV under another client address is refused.
    header = proxyproto.decode(forged(src, dst, good, when=now + 0.5))
    assert isinstance(header, proxyproto.ProxyHeader)
    moved = proxyproto.encode_v2(("203.0.113.8", 40000), dst, list(header.tlvs))
    assert await answer_of(a.host, port, moved + payload) == b""

    # The grants endpoint on the tunnel port answers a signed request only, and signs its answer.
    url = f"http://{a.host}:{cluster.tunnel_port}/.mproxy/peer/grants"
    async with aiohttp.ClientSession() as session:
        for auth in (None, other.sign_request("edge-x", time.time()), good.sign_request("edge-x", now - 60)):
            async with session.get(url, headers={"X-Mproxy-Peer": auth} if auth else {}) as resp:
                assert resp.status == 401, auth
        auth = good.sign_request("edge-x", time.time())
        async with session.get(url, headers={"X-Mproxy-Peer": auth}) as resp:
            body = await resp.read()
            good.verify_answer(auth.split(" ")[1], body, resp.headers.get("X-Mproxy-Peer-Sig"))
    assert json.loads(body) == {"id": a.id, "forwardPort": port, "draining": False, "domains": [NAME],
                                "ports": [PUBLIC_PORT]}

    text = await a.metrics()
    assert metric(text, "mproxy_edge_forwards_in_total", "bad_auth") == 3
    assert metric(text, "mproxy_edge_forwards_in_total", "stale") == 1
    assert metric(text, "mproxy_edge_forwards_in_total", "bad_header") == 2
    assert metric(text, "mproxy_edge_forwards_in_total", "replay") == 1
    assert metric(text, "mproxy_edge_forwards_in_total", "ok") == 1


async def test_forwards_are_bounded_by_max_forwards(cluster: Cluster) -> None:
    (a, b), _ = await start_pair(cluster, maxForwards=1)
    await start_sidecar(cluster, f"ws://{a.host}:{cluster.tunnel_port}/tunnel")
    await until(lambda: _granted(a), 15, "the sidecar's tunnel on A")
    await until(lambda: peer_knows(b, a.id), 10, "B to learn A's grants")
    reader, writer = await asyncio.open_connection(b.host, b.ports["tcp"], local_addr=(CLIENT_HOST, 0))
    writer.write(b"held open\n")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"FROM ")
    assert await asyncio.wait_for(reader.readline(), 10) == b"held open\n"
    # B forwards one client at most: the next is refused as before (a raw TCP client: closed).
    assert await refused(b.host, b.ports["tcp"], b"second\n")
    # A takes one forwarded client at most: a valid header from "another peer" gets NACK (or a RST: the
    # edge closes at once, its header unread).
    forward_port = (await a.status())["peering"]["forwardPort"]
    header = forged((CLIENT_HOST, 40002), (a.host, PUBLIC_PORT), PeerKeys(SECRET), when=time.time())
    assert await answer_of(a.host, forward_port, header + b"third\n") in (b"\x01", b"")
    writer.close()

    async def out_idle() -> bool:
        return "mproxy_edge_forwards_active{direction=\"out\"} 0.0" in await b.metrics()

    await until(out_idle, 10, "B's forwarded client to end")
    got, port = await exchange(b.host, b.ports["tcp"], b"fourth\n")
    assert got == f"FROM {CLIENT_HOST} {port}\n".encode() + b"fourth\n"
    assert metric(await b.metrics(), "mproxy_edge_forwards_out_total", "limit") == 1
    assert metric(await b.metrics(), "mproxy_edge_forwards_out_total", "ok") == 2
    assert metric(await a.metrics(), "mproxy_edge_forwards_in_total", "limit") == 1


async def test_a_forwarded_client_never_hops_again(cluster: Cluster) -> None:
    (a, b), _ = await start_pair(cluster)
    sidecar = await start_sidecar(cluster, f"ws://{b.host}:{cluster.tunnel_port}/tunnel")
    await until(lambda: _granted(b), 15, "the sidecar's tunnel on B")
    await until(lambda: peer_knows(a, b.id), 10, "A to learn B's grants")
    # A has no tunnel but knows B has one: a public client on A is forwarded...
    got, port = await exchange(a.host, a.ports["tcp"], b"one\n")
    assert got == f"FROM {CLIENT_HOST} {port}\n".encode() + b"one\n"
    # ...but a client forwarded TO A (validly signed) is routed locally or refused, never sent on to B.
    forward_port = (await a.status())["peering"]["forwardPort"]
    header = forged((CLIENT_HOST, 40001), (a.host, PUBLIC_PORT), PeerKeys(SECRET), when=time.time())
    assert await answer_of(a.host, forward_port, header + b"two\n") == b"\x01"  # NACK: no local tunnel
    text = await a.metrics()
    assert metric(text, "mproxy_edge_forwards_in_total", "refused") == 1
    assert metric(text, "mproxy_edge_forwards_out_total", "ok") == 1  # the public client only

    # The tunnel goes away: clients on A are refused (stale table: B refuses the forward; fresh: no peer),
    # quickly and without a loop.
    sidecar.proc.kill()
    await sidecar.proc.wait()
    await until(lambda: _no_tunnel(b), 10, "B to drop the dead sidecar's tunnel")
    started = time.monotonic()
    assert await refused(a.host, a.ports["tcp"], b"three\n")
    assert time.monotonic() - started < 3
    text_a, text_b = await a.metrics(), await b.metrics()
    assert metric(text_a, "mproxy_edge_forwards_out_total", "ok") == 1
    assert (metric(text_a, "mproxy_edge_forwards_out_total", "peer_refused")
            + metric(text_a, "mproxy_edge_forwards_out_total", "no_peer")) == 1
    assert metric(text_b, "mproxy_edge_forwards_out_total", "ok") == 0  # B never forwarded anything


async def _no_tunnel(edge: Edge) -> bool:
    return not (await edge.status())["ports"]


async def test_a_restarted_edge_forwards_until_the_sidecar_reaches_it(cluster: Cluster) -> None:
    (a, b), dns = await start_pair(cluster, replicas=2)
    url = f"ws://{HOSTNAME}:{cluster.tunnel_port}/tunnel"
    await start_sidecar(cluster, url, nameservers=[f"127.0.0.1:{dns.port}"])
    await until(lambda: _granted(a), 15, "the tunnel on A")
    await until(lambda: _granted(b), 15, "the tunnel on B")

    # Rolling restart of A: its replacement is up before any sidecar can reach it (the name does not list
    # it yet, as a pod that is not ready yet), and clients flow to both edges all the while.
    dns.addresses = [b.host]
    a.proc.terminate()
    await a.proc.wait()
    peers = {"hostname": HOSTNAME, "nameservers": [f"127.0.0.1:{dns.port}"], "refreshSeconds": 0.2,
             "expireSeconds": 1.0, "resolveSeconds": 0.5, "listen": f"{a.host}:0"}
    new_a = await cluster.edge(a.host, "edge-0b", replicas=2, kinds=("tls", "http"), peers=peers)
    assert await _no_tunnel(new_a)
    failures: list[str] = []
    stop = asyncio.Event()

    async def flow(edge: Edge, kind: str) -> int:
        done = 0
        while not stop.is_set():
            payload = payloads(done)[kind]
            try:
                got, port = await exchange(edge.host, edge.ports[kind], payload)
                if got != f"FROM {CLIENT_HOST} {port}\n".encode() + payload:
                    failures.append(f"{edge.id} {kind}: {got[:60]!r}")
            except OSError as exc:
                failures.append(f"{edge.id} {kind}: {exc}")
            done += 1
        return done

    flows = [asyncio.ensure_future(flow(edge, kind))
             for edge in (new_a, b) for kind in ("tls", "http", "tcp")]
    await asyncio.sleep(1.5)
    forwarded = metric(await new_a.metrics(), "mproxy_edge_forwards_out_total", "ok")
    dns.addresses = [new_a.host, b.host]  # the new pod is ready: the sidecar reaches it
    await until(lambda: _granted(new_a), 15, "the sidecar's tunnel on the new A")
    await asyncio.sleep(0.5)
    stop.set()
    counts = await asyncio.gather(*flows)
    assert failures == []
    assert forwarded > 0, "the new edge forwarded nothing before the sidecar reached it"
    print(f"rolling restart: {sum(counts)} clients, 0 refused, {forwarded:.0f} forwarded by the new edge")


async def test_the_edge_holding_the_only_tunnel_restarts(cluster: Cluster) -> None:
    """Behind one load-balanced address a sidecar holds one tunnel (replicas 1). When that edge restarts,
    clients are refused only until the sidecar reconnects to the other edge; from then on none is, on the
    survivor (local now) nor on the replacement (forwarded)."""
    (a, b), dns = await start_pair(cluster)
    lb = await cluster.balancer([(a.host, cluster.tunnel_port), (b.host, cluster.tunnel_port)])
    await start_sidecar(cluster, f"ws://127.0.0.1:{lb.port}/tunnel")  # the balancer sends it to A first
    await until(lambda: _granted(a), 15, "the tunnel on A")
    await until(lambda: peer_knows(b, a.id), 10, "B to learn A's grants")
    assert await _no_tunnel(b)

    failures: list[tuple[float, str]] = []
    stop = asyncio.Event()
    targets = [b]

    async def flow(kind: str) -> int:
        done = 0
        while not stop.is_set():
            edge = targets[done % len(targets)]
            payload = payloads(done)[kind]
            try:
                got, port = await exchange(edge.host, edge.ports[kind], payload, timeout=5)
                ok = got == f"FROM {CLIENT_HOST} {port}\n".encode() + payload
            except OSError:
                ok = False
            if not ok:
                failures.append((time.monotonic(), f"{edge.id} {kind}"))
            done += 1
            await asyncio.sleep(0.005)
        return done

    flows = [asyncio.ensure_future(flow(kind)) for kind in ("tls", "http", "tcp")]
    await asyncio.sleep(0.5)
    assert failures == []  # all forwarded to A so far
    dns.addresses = [b.host]  # A's pod is terminating: it leaves the headless Service
    stopped = time.monotonic()
    a.proc.terminate()
    await a.proc.wait()
    await until(lambda: _granted(b), 15, "the sidecar to reconnect to B")
    reconnected = time.monotonic()
    new_a = await cluster.edge(a.host, "edge-0b", replicas=1, kinds=("tls", "http"),
                               peers={"hostname": HOSTNAME, "nameservers": [f"127.0.0.1:{dns.port}"],
                                      "refreshSeconds": 0.2, "expireSeconds": 1.0, "resolveSeconds": 0.5,
                                      "listen": f"{a.host}:0"})
    targets.append(new_a)  # the replacement is ready: clients land on it too, forwarded to B
    await asyncio.sleep(1.5)
    stop.set()
    counts = await asyncio.gather(*flows)
    late = [what for at, what in failures if at > reconnected + 0.5]
    window = max((at for at, _ in failures), default=stopped) - stopped
    print(f"only tunnel restarted: {sum(counts)} clients, {len(failures)} refused within {window:.2f} s of "
          f"SIGTERM (sidecar on B after {reconnected - stopped:.2f} s), {len(late)} after")
    assert late == []
    assert reconnected - stopped < 5
    assert metric(await new_a.metrics(), "mproxy_edge_forwards_out_total", "ok") > 0
