"""PROXY protocol from a trusted balancer, and the per-client and per-tunnel limits."""

from __future__ import annotations

import asyncio

import pytest

from mproxy import proxyproto
from mproxy.codec import Address
from mproxy.tunnel.mux import Stream

from .harness import http_get, metrics_text, ports, token, tunnel_url

pytestmark = pytest.mark.e2e

REQUEST = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_from_a_trusted_balancer(parts, version) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(trustedProxies=["127.0.0.0/8"],
                             listeners=[{"kind": "http", "listen": "127.0.0.1:0", "proxyProtocol": True}])
    back = await parts.backends(["app.test"])
    seen: list[Address] = []

    def on_stream(stream: Stream) -> None:
        seen.append(stream.addr)

    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port},
                       on_stream=on_stream)
    await dev.start()
    p = ports(relay)
    header = proxyproto.encode(version, ("203.0.113.7", 51234), ("10.0.0.1", 80))
    answer = await _raw(p["http"], header + REQUEST)
    assert answer.startswith(b"HTTP/1.1 200") and b"hello A" in answer
    assert seen == [Address("IPv4", "203.0.113.7", "51234")]
    # a malformed PROXY header from the balancer is refused, not forwarded
    answer = await _raw(p["http"], b"PROXY TCP4 nonsense\r\n" + REQUEST)
    assert answer.startswith(b"HTTP/1.1 400") and b"bad_proxy_header" in answer


async def test_proxy_header_from_an_untrusted_peer_is_not_believed(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(trustedProxies=["10.0.0.0/8"],
                             listeners=[{"kind": "http", "listen": "127.0.0.1:0", "proxyProtocol": True}])
    header = proxyproto.encode("v1", ("203.0.113.7", 51234), ("10.0.0.1", 80))
    answer = await _raw(ports(relay)["http"], header + REQUEST)
    assert answer.startswith(b"HTTP/1.1 400")  # treated as a (malformed) direct client


async def test_connection_rate_per_client_address(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"connectionRate": 0.5, "connectionBurst": 3})
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    await dev.start()
    p = ports(relay)
    codes = [(await http_get(p["http"], "app.test"))[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert 'mproxy_edge_rejects_total{reason="rate_limited"} 2.0' in await metrics_text(relay)


async def test_concurrent_connections_per_client_and_streams_per_tunnel(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"maxStreamsPerClient": 2, "maxStreamsPerTunnel": 1})
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    held = []
    try:
        await dev.start()
        p = ports(relay)
        _r, w = await asyncio.open_connection("127.0.0.1", p["http"])
        w.write(b"GET /slow?s=1.5 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        held.append(w)
        await asyncio.sleep(0.3)
        # the tunnel's single stream is taken: 503 tunnel_full
        assert (await _raw(p["http"], REQUEST)).startswith(b"HTTP/1.1 503")
        _r2, w2 = await asyncio.open_connection("127.0.0.1", p["http"])
        held.append(w2)  # idle, sniffing: counts against this address
        await asyncio.sleep(0.1)
        assert (await _raw(p["http"], REQUEST)).startswith(b"HTTP/1.1 429")
        text = await metrics_text(relay)
        assert 'mproxy_edge_rejects_total{reason="tunnel_full"} 1.0' in text
        assert 'mproxy_edge_rejects_total{reason="too_many_connections"} 1.0' in text
    finally:
        for w in held:
            w.close()


async def test_ipv6_clients_are_framed_as_ipv6(parts) -> None:  # type: ignore[no-untyped-def]
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    relay = await parts.edge(listeners=[{"kind": "http", "listen": "[::1]:0"}])
    back = await parts.backends(["app.test"])
    seen: list[Address] = []
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port},
                       on_stream=lambda stream: seen.append(stream.addr))
    await dev.start()
    reader, writer = await asyncio.open_connection("::1", ports(relay)["http"])
    writer.write(REQUEST)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert len(seen) == 1 and seen[0].family == "IPv6" and seen[0].address == "::1"


async def test_silent_clients_and_clients_without_a_name(parts) -> None:  # type: ignore[no-untyped-def]
    import ssl

    relay = await parts.edge(limits={"sniffTimeoutSeconds": 0.5})
    p = ports(relay)
    # connects and says nothing: a TLS handshake_failure alert after the sniff timeout, then closed
    reader, writer = await asyncio.open_connection("127.0.0.1", p["tls"])
    assert await asyncio.wait_for(reader.read(), 5) == b"\x15\x03\x01\x00\x02\x02\x28"
    writer.close()
    # a TLS client that sends no SNI: refused with an unrecognized_name alert
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", p["tls"], ssl=ctx), 5)
    # an HTTP/1.0 request without Host
    answer = await _raw(p["http"], b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"no_name" in answer
    text = await metrics_text(relay)
    assert 'mproxy_edge_rejects_total{reason="sniff_timeout"} 1.0' in text
    assert 'mproxy_edge_rejects_total{reason="no_name"} 2.0' in text


async def test_a_trickling_client_gets_one_deadline_not_one_per_byte(parts) -> None:  # type: ignore[no-untyped-def]
    import time

    relay = await parts.edge(limits={"sniffTimeoutSeconds": 1})
    reader, writer = await asyncio.open_connection("127.0.0.1", ports(relay)["http"])
    started = time.monotonic()
    request = b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200
    answer_task = asyncio.ensure_future(reader.read(4096))
    for byte in request:  # one byte every 0.2 s: each read is quick, the whole is too slow
        if answer_task.done() or time.monotonic() - started > 5:
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.2)
    answer = await asyncio.wait_for(answer_task, 5)
    assert answer.startswith(b"HTTP/1.1 400") and b"sniff_timeout" in answer
    assert time.monotonic() - started < 3
    writer.close()


async def test_admission_is_held_while_relayed_and_freed_after(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"maxStreamsPerClient": 1})
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    await dev.start()
    p = ports(relay)
    for _ in range(5):  # one at a time: each finished client gives its slot back
        assert (await _raw(p["http"], REQUEST)).startswith(b"HTTP/1.1 200")
        for _ in range(100):  # the slot is free once the edge has seen this client's close
            if relay.limiter.open_count("127.0.0.1") == 0:
                break
            await asyncio.sleep(0.01)
        assert relay.limiter.open_count("127.0.0.1") == 0
    _, held = await asyncio.open_connection("127.0.0.1", p["http"])
    held.write(b"GET /slow?s=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")  # relayed, in flight
    await asyncio.sleep(0.3)
    assert (await _raw(p["http"], REQUEST)).startswith(b"HTTP/1.1 429")
    held.close()
    await asyncio.sleep(0.3)
    assert relay.limiter.open_count("127.0.0.1") == 0
