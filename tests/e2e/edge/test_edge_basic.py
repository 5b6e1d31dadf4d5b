"""Through the edge on real sockets: TLS by SNI (never terminated), HTTP by Host, raw TCP by port."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from .harness import (
    TCP_PUBLIC_PORT,
    http_get,
    metrics_text,
    ports,
    status,
    tcp_roundtrip,
    tls_request,
    token,
    tunnel_url,
)

pytestmark = pytest.mark.e2e


async def closed_at_once(port: int, payload: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    try:
        return await asyncio.wait_for(reader.read(), 3) == b""
    except ConnectionResetError:
        return True
    finally:
        writer.close()


@pytest.mark.parametrize("token_in", ["handshake", "query", "header"])
async def test_tls_http_tcp_through_the_edge(parts, token_in) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test", "www.app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"], [TCP_PUBLIC_PORT]), token_in=token_in,
                       names={"app.test": back.https_port, "www.app.test": back.https_port,
                              "web.app.test": back.http_port},
                       tcp={TCP_PUBLIC_PORT: back.echo_port})
    await dev.start()
    p = ports(relay)
    # TLS passthrough: the backend's certificate (issued by our CA) verifies end to end
    assert await tls_request(p["tls"], "app.test", back.ca) == b"A:ping"
    assert await tls_request(p["tls"], "www.app.test", back.ca, b"sub") == b"A:sub"
    status_code, body, _ = await http_get(p["http"], "Web.App.test:8080", "/")
    assert (status_code, body) == (200, "hello A host=Web.App.test:8080 path=/")
    status_code, body, _ = await http_get(p["http"], "web.app.test", "/")
    assert status_code == 200 and body == "hello A host=web.app.test path=/"
    payload = bytes(range(256)) * 1000
    assert await tcp_roundtrip(p["tcp"], payload) == payload
    st = await status(relay)
    assert st["names"] == {"app.test": 1} and st["ports"] == {str(TCP_PUBLIC_PORT): 1}
    text = await metrics_text(relay)
    assert 'mproxy_edge_name_tunnels{name="app.test"} 1.0' in text
    assert 'mproxy_edge_client_connections_total{name="app.test",protocol="https",result="ok"} 2.0' in text
    assert 'mproxy_edge_bytes_total{direction="in",name="",protocol="tcp"} 256000.0' in text


async def test_unknown_names_are_refused_in_their_protocol(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.https_port})
    await dev.start()
    p = ports(relay)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(p["tls"], "other.test", back.ca)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(p["tls"], "notapp.test", back.ca)
    code, body, headers = await http_get(p["http"], "other.test")
    assert code == 404 and "no tunnel" in body and headers["X-Mproxy-Reason"] == "no_tunnel"
    # a tcp port nobody was granted: closed at once
    assert await closed_at_once(p["tcp"], b"hello")
    # plain text on the TLS port
    assert await closed_at_once(p["tls"], b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    text = await metrics_text(relay)
    assert 'mproxy_edge_rejects_total{reason="no_tunnel"} 4.0' in text
    assert 'mproxy_edge_rejects_total{reason="not_tls"} 1.0' in text
    assert "other.test" not in text  # client-chosen names never become label values


async def test_half_close_carries_through(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token([], [TCP_PUBLIC_PORT]), tcp={TCP_PUBLIC_PORT: back.echo_port})
    await dev.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", ports(relay)["tcp"])
    writer.write(b"x" * 300_000)
    writer.write_eof()  # we are done sending, but still want the whole answer
    got = await asyncio.wait_for(reader.read(), 10)  # until the echo server's EOF comes back
    assert got == b"x" * 300_000
    writer.close()
    text = await metrics_text(relay)
    assert 'mproxy_edge_client_connections_total{name="",protocol="tcp",result="ok"} 1.0' in text


async def test_a_failing_backend_is_reported_to_its_client(parts) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": dead, "web.app.test": dead})
    await dev.start()
    p = ports(relay)
    code, body, headers = await http_get(p["http"], "web.app.test")
    assert code == 502 and headers["X-Mproxy-Reason"] == "backend_failed"
    assert "ECONNREFUSED" in body and "127.0.0.1" not in body  # the code, not internal addresses
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await tls_request(p["tls"], "app.test", back.ca)
    assert len((await status(relay))["tunnels"]) == 1  # the tunnel carries on


async def test_bytes_of_long_lived_clients_are_counted_as_they_flow(parts) -> None:  # type: ignore[no-untyped-def]
    import time

    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token([], [TCP_PUBLIC_PORT]), tcp={TCP_PUBLIC_PORT: back.echo_port})
    line_in = 'mproxy_edge_bytes_total{direction="in",name="",protocol="tcp"} 100000.0'
    line_out = 'mproxy_edge_bytes_total{direction="out",name="",protocol="tcp"} 100000.0'
    await dev.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", ports(relay)["tcp"])
    writer.write(b"b" * 100_000)
    got = 0
    while got < 100_000:
        got += len(await asyncio.wait_for(reader.read(65536), 5))
    deadline = time.monotonic() + 5
    while line_in not in (text := await metrics_text(relay)) or line_out not in text:
        assert time.monotonic() < deadline, "bytes of an open connection were not counted"
        await asyncio.sleep(0.1)
    writer.close()  # ending it adds nothing twice
    await asyncio.sleep(0.5)
    text = await metrics_text(relay)
    assert line_in in text and line_out in text
    assert 'mproxy_edge_client_connections_total{name="",protocol="tcp",result="ok"} 1.0' in text
