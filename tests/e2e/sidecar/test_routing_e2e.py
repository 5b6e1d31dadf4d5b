"""The sidecar behind the node reference relay (npm proxy-packer framing): routing, errors, TLS, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mproxy.proxyproto import ProxyHeader, decode

from .certs import CertAuthority
from .conftest import (
    BackendFactory,
    RelayFactory,
    SidecarFactory,
    echo,
    route,
    serve_handler,
    sidecar_yaml,
    tagged_echo,
    tcp_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.interop]


async def test_tcp_and_ssh_by_service_and_port_with_half_close(node_relay: RelayFactory,
                                                               backends: BackendFactory,
                                                               run_sidecar: SidecarFactory) -> None:
    tcp5050 = await backends(tagged_echo(b"tcp5050"))
    tcpany = await backends(tagged_echo(b"tcpany"))
    ssh = await backends(tagged_echo(b"ssh"))
    async with node_relay(
        {"service": "tcp", "serviceport": 5050},
        {"service": "tcp", "serviceport": 6000},
        {"service": "ssh", "serviceport": 22},
    ) as relay:
        cfg = sidecar_yaml(relay, [
            route("tcpany", tcpany.port, services=["tcp"]),
            route("tcp5050", tcp5050.port, services=["tcp"], ports=[5050]),
            route("ssh", ssh.port, services=["ssh"]),
        ])
        async with run_sidecar(cfg, relay=relay):
            p5050, p6000, p22 = relay.ports
            # The client half-closes after its request; the answer still arrives in full (half-close).
            assert await tcp_roundtrip(p5050, b"hello") == b"tcp5050:hello"
            assert await tcp_roundtrip(p6000, b"x" * 300_000) == b"tcpany:" + b"x" * 300_000
            assert await tcp_roundtrip(p22, b"SSH-2.0-test\r\n") == b"ssh:SSH-2.0-test\r\n"


async def test_unknown_name_gets_an_error_frame_and_no_backend_connection(
        node_relay: RelayFactory, backends: BackendFactory, run_sidecar: SidecarFactory) -> None:
    web_b = await backends(tagged_echo(b"web"))
    async with node_relay({"service": "https", "serviceport": 443, "name": "unknown.example.org"},
                          {"service": "smtp", "serviceport": 25}) as relay:
        cfg = sidecar_yaml(relay, [route("web", web_b.port, services=["https"], hostnames=["example.com"])])
        async with run_sidecar(cfg, relay=relay) as sidecar:
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[0], b"\x16\x03\x01") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "E_NO_ROUTE" and "unknown.example.org" in err["message"]
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[1], b"HELO") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "E_NO_ROUTE" and "smtp" in err["message"]
            assert web_b.connections == 0
            assert sidecar.metrics.registry.get_sample_value(
                "mproxy_sidecar_streams_refused_total", {"reason": "no_route"}) == 2


async def test_backend_refused_or_timing_out_errors_that_stream_only(node_relay: RelayFactory,
                                                                     backends: BackendFactory,
                                                                     run_sidecar: SidecarFactory) -> None:
    good = await backends(tagged_echo(b"good"))
    # A port with nothing listening: connection refused.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    # A listener whose accept queue is full and never drained: SYNs are dropped, the connect times out.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    hole_port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            f.connect(("127.0.0.1", hole_port))
        fillers.append(f)
    await asyncio.sleep(0.1)
    async with node_relay(
        {"service": "tcp", "serviceport": 1}, {"service": "tcp", "serviceport": 2},
        {"service": "tcp", "serviceport": 3},
    ) as relay:
        cfg = sidecar_yaml(relay, [
            route("good", good.port, services=["tcp"], ports=[1]),
            route("refused", dead_port, services=["tcp"], ports=[2]),
            route("slow", hole_port, ports=[3], connectTimeoutSeconds=0.3),
        ])
        async with run_sidecar(cfg, relay=relay):
            # A long-lived good stream stays up across the failures.
            r, w = await asyncio.open_connection("127.0.0.1", relay.ports[0])
            w.write(b"one")
            assert await asyncio.wait_for(r.readexactly(8), 5) == b"good:one"
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[1], b"x") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "ECONNREFUSED" and f"127.0.0.1:{dead_port}" in err["message"]
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[2], b"x") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "ETIMEDOUT" and "timed out after 0.3 s" in err["message"]
            w.write(b"two")
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"two"
            w.close()
            # And new streams still work (the reference stalls the whole tunnel here).
            assert await tcp_roundtrip(relay.ports[0], b"three") == b"good:three"
    for f in fillers:
        f.close()
    blackhole.close()


async def test_tls_passthrough_routed_by_sni(node_relay: RelayFactory, backends: BackendFactory,
                                             run_sidecar: SidecarFactory, tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path / "ca")

    async def whoami(tag: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(4)
            w.write(tag)
            await w.drain()
        return handle

    exact = await backends(await whoami(b"exact"), ca.server_context("www.example.com"))
    wild = await backends(await whoami(b"wild!"), ca.server_context("*.example.com", "a.example.com"))
    # The relay sends no name (like a tcp port): the sidecar sniffs the SNI itself.
    async with node_relay({"service": "https", "serviceport": 443},
                          {"service": "https", "serviceport": 443, "name": "www.example.com"}) as relay:
        cfg = sidecar_yaml(relay, [
            route("wild", wild.port, services=["https"], hostnames=["*.example.com"]),
            route("exact", exact.port, services=["https"], hostnames=["www.example.com"]),
        ])
        async with run_sidecar(cfg, relay=relay):
            client_ctx = ca.client_context()

            async def hello(port: int, sni: str) -> bytes:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=sni)
                w.write(b"ping")
                data = await asyncio.wait_for(r.readexactly(5), 5)
                w.close()
                return data

            assert await hello(relay.ports[0], "www.example.com") == b"exact"
            assert await hello(relay.ports[0], "a.example.com") == b"wild!"
            # The relay's own name (from its SNI) is used when present.
            assert await hello(relay.ports[1], "www.example.com") == b"exact"
            # A certificate check failure proves the TLS really reached the backend end to end.
            with pytest.raises(ssl.SSLCertVerificationError):
                await hello(relay.ports[0], "x.y.example.com")  # routed to wild, not in its cert


async def test_http_routed_by_host_with_a_real_client(node_relay: RelayFactory,
                                                      run_sidecar: SidecarFactory) -> None:
    runners = []
    ports = []
    for tag in ("alpha", "beta"):
        async def handler(request: web.Request, tag: str = tag) -> web.Response:
            return web.Response(text=f"{tag} {request.host} {request.path}")
        runner, port = await serve_handler(handler, "/{p:.*}")
        runners.append(runner)
        ports.append(port)
    try:
        async with node_relay({"service": "http", "serviceport": 80}) as relay:
            cfg = sidecar_yaml(relay, [
                route("alpha", ports[0], services=["http"], hostnames=["alpha.test"]),
                route("beta", ports[1], services=["http"], hostnames=["*.beta.test"]),
            ])
            # One connection per request: routing is per client connection (stream).
            connector = aiohttp.TCPConnector(force_close=True)
            async with run_sidecar(cfg, relay=relay), aiohttp.ClientSession(connector=connector) as session:
                base = f"http://127.0.0.1:{relay.ports[0]}"
                async with session.get(base + "/a", headers={"Host": "alpha.test"}) as resp:
                    assert await resp.text() == "alpha alpha.test /a"
                async with session.get(base + "/b", headers={"Host": "x.beta.test:8080"}) as resp:
                    assert await resp.text() == "beta x.beta.test:8080 /b"
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_carries_the_client_address(node_relay: RelayFactory, backends: BackendFactory,
                                                         run_sidecar: SidecarFactory, version: str) -> None:
    seen: list[ProxyHeader] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = b""
        while True:
            data += await r.read(1024)
            hdr = decode(data)
            if isinstance(hdr, ProxyHeader):
                seen.append(hdr)
                w.write(data[hdr.length:])
                await echo(r, w)
                return

    b = await backends(handle)
    async with node_relay({"service": "tcp", "serviceport": 7}) as relay:
        cfg = sidecar_yaml(relay, [route("pp", b.port, proxyProtocol=version)])
        async with run_sidecar(cfg, relay=relay):
            r, w = await asyncio.open_connection("127.0.0.1", relay.ports[0])
            client_port = w.get_extra_info("sockname")[1]
            w.write(b"after the header")
            assert await asyncio.wait_for(r.readexactly(16), 5) == b"after the header"
            w.close()
    assert seen[0].version == (1 if version == "v1" else 2)
    assert seen[0].source == ("127.0.0.1", client_port)
    assert seen[0].destination == ("127.0.0.1", b.port)


async def test_wildcard_against_exact_precedence_and_default_route(node_relay: RelayFactory,
                                                                   backends: BackendFactory,
                                                                   run_sidecar: SidecarFactory) -> None:
    exact = await backends(tagged_echo(b"exact"))
    wild = await backends(tagged_echo(b"wild"))
    fallback = await backends(tagged_echo(b"default"))
    async with node_relay(
        {"service": "https", "serviceport": 443, "name": "api.example.com"},
        {"service": "https", "serviceport": 443, "name": "www.example.com"},
        {"service": "https", "serviceport": 443, "name": "other.org"},
    ) as relay:
        cfg = sidecar_yaml(relay, [
            route("wild", wild.port, hostnames=["*.example.com"]),
            route("exact", exact.port, hostnames=["api.example.com"]),
            route("fallback", fallback.port, services=["none"]),
        ], defaultRoute="fallback")
        async with run_sidecar(cfg, relay=relay):
            assert await tcp_roundtrip(relay.ports[0], b"1") == b"exact:1"
            assert await tcp_roundtrip(relay.ports[1], b"2") == b"wild:2"
            assert await tcp_roundtrip(relay.ports[2], b"3") == b"default:3"
