"""Faults stay where they start: slow clients, slow backends, a tunnel sending garbage, long names."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp
import pytest

from mproxy.codec import Address, Error, Parser, pack_data_header, pack_header

from .harness import (
    http_get,
    metrics_text,
    ports,
    status,
    tls_request,
    token,
    tunnel_url,
)

pytestmark = pytest.mark.e2e


async def _timed_get(port: int, host: str) -> float:
    started = time.monotonic()
    code, body, _ = await http_get(port, host, "/", timeout=5)
    assert code == 200 and body.startswith("hello")
    return time.monotonic() - started


async def test_a_slow_client_does_not_stall_the_tunnel(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"streamBufferBytes": 65536})
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    await dev.start()
    p = ports(relay)
    # A client asks for 32 MiB and then reads nothing.
    reader, writer = await asyncio.open_connection("127.0.0.1", p["http"])
    writer.write(b"GET /big?size=33554432 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1.0)
    # The edge paused that one client (per-client pause frame), the tunnel still moves other clients.
    session = next(iter(relay.sessions))
    assert session.mux is not None and session.mux.pauses_sent >= 1
    times = [await _timed_get(p["http"], "app.test") for _ in range(5)]
    assert max(times) < 2.0, times  # bounded by the machine, not by the 32 MiB stuck behind
    # The slow client still gets its bytes once it reads.
    got = 0
    while got < 1 << 20:
        chunk = await asyncio.wait_for(reader.read(1 << 16), 5)
        assert chunk
        got += len(chunk)
    writer.close()


async def test_a_slow_backend_does_not_stall_others(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    await dev.start()
    p = ports(relay)
    slow = asyncio.ensure_future(http_get(p["http"], "app.test", "/slow?s=4", timeout=15))
    await asyncio.sleep(0.2)
    times = [await _timed_get(p["http"], "app.test") for _ in range(5)]
    assert not slow.done() and max(times) < 2.0
    assert (await slow)[:2] == (200, "slow A")


GARBAGE = {
    "header length 0": b"\xfe\x00this is not M-PROXY",
    "bad version byte": b"\x01\x0cIPv4,1,2,0,x",
    "body over maxFrameBytes": b"\xfe\x1b" + b"IPv4,1.2.3.4,5,99999999,tcp",
    "length not a number": b"\xfe\x16" + b"IPv4,1.2.3.4,5,x1,http",
}


@pytest.mark.parametrize("garbage", list(GARBAGE.values()), ids=list(GARBAGE))
async def test_garbage_from_one_tunnel_closes_only_that_tunnel(parts, garbage) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    good = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.https_port})
    await good.start()
    async with aiohttp.ClientSession() as session, session.ws_connect(
        tunnel_url(relay) + "?access_token=" + token(["app.test"])
    ) as bad:
        assert len((await status(relay))["tunnels"]) == 2
        await bad.send_bytes(garbage)
        msg = await asyncio.wait_for(bad.receive(), 5)
        while msg.type == aiohttp.WSMsgType.BINARY:
            msg = await asyncio.wait_for(bad.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1002
        reason = msg.extra or ""
        assert reason.startswith("malformed M-PROXY data") and "byte" in reason, reason
    st = await status(relay)
    assert len(st["tunnels"]) == 1 and st["names"] == {"app.test": 1}
    p = ports(relay)
    for _ in range(3):
        assert await tls_request(p["tls"], "app.test", back.ca) == b"A:ping"
    assert 'mproxy_edge_tunnel_rejects_total{reason="protocol_error"} 1.0' in await metrics_text(relay)


async def test_frames_for_unknown_clients_get_e_no_conn(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    async with aiohttp.ClientSession() as session, session.ws_connect(
        tunnel_url(relay) + "?access_token=" + token(["app.test"])
    ) as ws:
        addr = Address("IPv4", "198.51.100.9", "4444")
        other = Address("IPv4", "198.51.100.9", "4445")
        await ws.send_bytes(pack_data_header(addr, 5, service="https") + b"hello")
        await ws.send_bytes(pack_header(other, "pause", 0))
        parser = Parser()
        errors: list[Error] = []
        while len(errors) < 2:
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.BINARY
            errors += [e for e in parser.feed(msg.data) if isinstance(e, Error)]
        assert [(e.code, e.client_id) for e in errors] == [("E_NO_CONN", addr.client_id),
                                                           ("E_NO_CONN", other.client_id)]
        assert len((await status(relay))["tunnels"]) == 1  # the tunnel carries on


def _long_name(length: int) -> str:
    labels, left = [], length
    while left > 0:
        size = min(63, left if left <= 63 else 62)
        labels.append("a" * size)
        left -= size + 1
    name = ".".join(labels)
    assert len(name) == length, (len(name), length)
    return name


async def test_names_at_the_header_limit(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    p = ports(relay)
    # connection header: "IPv4,127.0.0.1,<port>,0,connection,<serviceport>,<name>,https" <= 255 bytes;
    # client ports on loopback are 5 digits on Linux (ephemeral range 32768-60999).
    fixed = len("IPv4,127.0.0.1,") + 5 + len(",0,connection,") + len(str(p["tls"])) + 1 + len(",https")
    fits, too_long = _long_name(255 - fixed), _long_name(256 - fixed)
    back = await parts.backends([fits, too_long])
    dev = parts.device(tunnel_url(relay), token([fits, too_long]),
                       names={fits: back.https_port, too_long: back.https_port})
    await dev.start()
    assert await tls_request(p["tls"], fits, back.ca) == b"A:ping"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(p["tls"], too_long, back.ca)
    assert dev.streams_seen == 1  # the long one never reached the tunnel
    assert 'mproxy_edge_rejects_total{reason="name_too_long"} 1.0' in await metrics_text(relay)
    # and the tunnel is intact
    assert await tls_request(p["tls"], fits, back.ca) == b"A:ping"
