"""Listener groups (Gateway API TLSRouteHostnameIntersection): one edge, one port on two addresses, each
address in its own group; two real `mproxy sidecar` processes with the same hostname and port routes but
different backends, each asking for one group. Each address reaches only its own backend; names and ports
the group has no tunnel for are refused there, never served by the other group's tunnel; a token that lists
its group is granted every name and port of that group's listeners (below specific grants); a sidecar that
asks for a group its token does not allow is refused, and says why."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import pytest
from tests.e2e.udp.harness import client as udp_client
from tests.e2e.udp.harness import udp_echo
from tests.ports import free_port

from mproxy.ca import CertificateAuthority

from .harness import Parts, metrics_text, sidecar_process, status, token, tunnel_url

pytestmark = pytest.mark.e2e

A, B, NONE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LIMITS = {"connectionRate": 100000, "connectionBurst": 100000}


def handshake_error(host: str, port: int, name: str, ca: CertificateAuthority) -> BaseException | None:
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            with ca.client_context().wrap_socket(sock, server_hostname=name):
                return None
        except (OSError, ssl.SSLError) as exc:
            return exc


async def tcp_echo(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def tls_to(host: str, port: int, name: str, ca: CertificateAuthority) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, ssl=ca.client_context(), server_hostname=name)
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def until_status(relay: Any, check: Any, what: str, within: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while not check(got := await status(relay)):
        assert time.monotonic() < deadline, f"{what}: {got}"
        await asyncio.sleep(0.05)
    return got


async def test_each_address_reaches_only_its_own_groups_tunnel(parts: Parts) -> None:
    tls_port, tcp_port = free_port((A, B, NONE)), free_port((A, B, NONE))
    relay = await parts.edge(listeners=[
        {"kind": "tls", "listen": f"{A}:{tls_port}", "group": "gw-a", "tlsRefusal": "close"},
        {"kind": "tls", "listen": f"{B}:{tls_port}", "group": "gw-b", "tlsRefusal": "close"},
        {"kind": "tls", "listen": f"{NONE}:{tls_port}", "tlsRefusal": "close"},  # no group
        {"kind": "tcp", "listen": f"{A}:{tcp_port}", "group": "gw-a"},
        {"kind": "tcp", "listen": f"{B}:{tcp_port}", "group": "gw-b"},
    ], limits=LIMITS)
    back_a = await parts.backends(["app.test", "a-only.test"], label="A")
    back_b = await parts.backends(["app.test", "a-only.test"], label="B", ca=back_a.ca)
    ca = back_a.ca

    def routes(back: Any) -> list[dict[str, Any]]:
        return [{"name": "tls", "match": {"services": ["https"]},
                 "backend": {"host": "127.0.0.1", "port": back.https_port}},
                {"name": "echo", "match": {"services": ["tcp"]},
                 "backend": {"host": "127.0.0.1", "port": back.echo_port}}]

    url = tunnel_url(relay)
    # A's token also grants a-only.test; B's token is limited to gw-b by its claim as well.
    await sidecar_process(parts, "a", url, token(["app.test", "a-only.test"], [tcp_port]), routes(back_a),
                          listenerGroups=["gw-a"])
    await sidecar_process(parts, "b", url, token(["app.test"], [tcp_port], listener_groups=["gw-b"]),
                          routes(back_b), listenerGroups=["gw-b"])
    got = await until_status(relay, lambda s: s["names"].get("app.test") == 2, "both sidecars connect")
    assert sorted(tuple(t["listenerGroups"]) for t in got["tunnels"]) == [("gw-a",), ("gw-b",)]
    assert {item.get("group") for item in got["listeners"]} == {"gw-a", "gw-b", None}

    for _ in range(20):  # not a balancing accident: every client of an address lands in its group
        assert await tls_to(A, tls_port, "app.test", ca) == b"A:ping"
        assert await tls_to(B, tls_port, "app.test", ca) == b"B:ping"
        assert await tcp_echo(A, tcp_port, b"x") == b"x" and await tcp_echo(B, tcp_port, b"y") == b"y"
    assert back_a.servers and back_b.servers
    # a-only.test is granted to A's tunnel only: served at A's address, never by A at B's. B's token
    # lists gw-b, so B owns gw-b's address (a group-wide grant): its sidecar gets the name there.
    assert await tls_to(A, tls_port, "a-only.test", ca) == b"A:ping"
    assert await tls_to(B, tls_port, "a-only.test", ca) == b"B:ping"
    # A's token has no listenerGroups claim: it asked for gw-a, but gets only its names there.
    err = await asyncio.to_thread(handshake_error, A, tls_port, "b-only.test", ca)
    assert isinstance(err, ssl.SSLEOFError), err
    # The listener with no group: both tunnels asked for a group, so nobody serves it.
    err = await asyncio.to_thread(handshake_error, NONE, tls_port, "app.test", ca)
    assert isinstance(err, ssl.SSLEOFError), err


async def test_a_reload_that_changes_the_groups_moves_the_tunnel(parts: Parts) -> None:
    """A tunnel asks for its groups when it dials: a reload with other groups redials, and the old tunnel
    (which would keep serving the group taken away) drains and goes."""
    port = free_port((A, B))
    relay = await parts.edge(listeners=[
        {"kind": "tls", "listen": f"{A}:{port}", "group": "gw-a", "tlsRefusal": "close"},
        {"kind": "tls", "listen": f"{B}:{port}", "group": "gw-b", "tlsRefusal": "close"},
    ], limits=LIMITS)
    back = await parts.backends(["app.test"], label="S")
    routes = [{"name": "tls", "match": {"services": ["https"]},
               "backend": {"host": "127.0.0.1", "port": back.https_port}}]
    await sidecar_process(parts, "s", tunnel_url(relay), token(["app.test"]), routes, reload=True,
                          listenerGroups=["gw-a"])
    await until_status(relay, lambda s: [t["listenerGroups"] for t in s["tunnels"]] == [["gw-a"]],
                       "the tunnel asks for gw-a")
    assert await tls_to(A, port, "app.test", back.ca) == b"S:ping"
    path = parts.tmp / "sidecar-s.yaml"
    path.write_text(path.read_text().replace("- gw-a", "- gw-b"))
    await until_status(relay, lambda s: [t["listenerGroups"] for t in s["tunnels"]] == [["gw-b"]],
                       "the reloaded sidecar's only tunnel asks for gw-b")
    assert await tls_to(B, port, "app.test", back.ca) == b"S:ping"
    err = await asyncio.to_thread(handshake_error, A, port, "app.test", back.ca)
    assert isinstance(err, ssl.SSLEOFError), err


@pytest.mark.parametrize("token_in", ["header", "handshake"])
async def test_a_group_the_token_does_not_allow_is_refused_with_the_reason(parts: Parts,
                                                                          token_in: str) -> None:
    port = free_port((A, B))
    relay = await parts.edge(listeners=[{"kind": "tls", "listen": f"{A}:{port}", "group": "gw-a"},
                                        {"kind": "tls", "listen": f"{B}:{port}", "group": "gw-b"}])
    back = await parts.backends(["app.test"])
    proc = await sidecar_process(parts, "x", tunnel_url(relay), token(["app.test"], listener_groups=["gw-a"]),
                                 [{"name": "tls", "match": {"services": ["https"]},
                                   "backend": {"host": "127.0.0.1", "port": back.https_port}}],
                                 listenerGroups=["gw-b"], tokenIn=token_in)
    assert proc.stderr is not None
    async with asyncio.timeout(15):
        while b"listener groups not allowed" not in (line := await proc.stderr.readline()):
            assert line, "the sidecar exited without reporting the refusal"
    text = line.decode()
    assert "asked for gw-b" in text and "allows only gw-a" in text and "--listener-group" in text, text
    # header: HTTP 403 before the upgrade; handshake: the add_token reply (E_AUTH), then the tunnel closes.
    assert ("HTTP 403" in text) == (token_in == "header"), text
    assert not any(t["domains"] for t in (await status(relay))["tunnels"])  # never granted anything
    for host in (A, B):  # nothing serves either group
        assert await tls_request_or_none(host, port, back.ca) is None


async def tls_request_or_none(host: str, port: int, ca: CertificateAuthority) -> bytes | None:
    try:
        return await tls_to(host, port, "app.test", ca)
    except (OSError, ssl.SSLError):
        return None


async def test_a_forwarded_client_lands_only_on_a_tunnel_of_its_listeners_group(parts: Parts) -> None:
    """Two edges with peers: both sidecars dial edge 1 only; clients of edge 2's group addresses are
    forwarded to edge 1 and still reach only their own group's tunnel, refused there as on edge 2's
    listener (`tlsRefusal: close`)."""
    one, two = "127.0.0.2", "127.0.0.3"
    t1, t2, f1, f2, port = (free_port((one, two, "127.0.0.5", "127.0.0.6", "127.0.0.7")) for _ in range(5))

    def peers(listen: str, other: str) -> dict[str, Any]:
        return {"listen": listen, "addresses": [other], "refreshSeconds": 0.2}

    edge1 = await parts.edge(id="edge-1", listeners=[], tunnel={"listen": f"{one}:{t1}"},
                             peers=peers(f"{one}:{f1}", f"{two}:{t2}"), limits=LIMITS)
    edge2 = await parts.edge(id="edge-2", tunnel={"listen": f"{two}:{t2}"},
                             peers=peers(f"{two}:{f2}", f"{one}:{t1}"), limits=LIMITS, listeners=[
        {"kind": "tls", "listen": f"127.0.0.5:{port}", "group": "gw-a", "tlsRefusal": "close"},
        {"kind": "tls", "listen": f"127.0.0.6:{port}", "group": "gw-b"},  # alert
        {"kind": "tls", "listen": f"127.0.0.7:{port}", "tlsRefusal": "close"},  # no group
    ])
    back_a = await parts.backends(["app.test", "a-only.test", "gone.test"], label="A")
    back_b = await parts.backends(["app.test"], label="B", ca=back_a.ca)
    ca = back_a.ca
    url = f"ws://{one}:{t1}/tunnel"
    gone = {"name": "gone", "match": {"hostnames": ["gone.test"]},
            "backends": [{"weight": 1, "refuse": True}]}
    for label, back, names in (("a", back_a, ["app.test", "a-only.test", "gone.test"]),
                               ("b", back_b, ["app.test"])):
        await sidecar_process(parts, label, url, token(names), [gone, {
            "name": "tls", "match": {"services": ["https"]},
            "backend": {"host": "127.0.0.1", "port": back.https_port}}], listenerGroups=[f"gw-{label}"])
    await until_status(edge1, lambda s: s["names"].get("app.test") == 2, "both sidecars reach edge 1")
    got = await until_status(
        edge2, lambda s: {p.get("id"): p.get("groups") for p in s["peering"]["peers"]}.get("edge-1") ==
        {"gw-a": {"domains": ["a-only.test", "app.test", "gone.test"], "ports": []},
         "gw-b": {"domains": ["app.test"], "ports": []}}, "edge 2 learns edge 1's grants per group")
    assert got["names"] == {}  # edge 2 holds no tunnel itself

    for _ in range(10):
        assert await tls_to("127.0.0.5", port, "app.test", ca) == b"A:ping"
        assert await tls_to("127.0.0.6", port, "app.test", ca) == b"B:ping"
    # gw-b has no tunnel for a-only.test anywhere: refused on edge 2 (an alert: that listener's default).
    err = await asyncio.to_thread(handshake_error, "127.0.0.6", port, "a-only.test", ca)
    assert isinstance(err, ssl.SSLError) and err.reason == "TLSV1_UNRECOGNIZED_NAME", err
    # No group: only unscoped tunnels, of which there are none.
    err = await asyncio.to_thread(handshake_error, "127.0.0.7", port, "app.test", ca)
    assert isinstance(err, ssl.SSLEOFError), err
    # gone.test is forwarded (A's tunnel grants it in gw-a) and refused by A's sidecar on edge 1: a close,
    # as edge 2's gw-a listener says, not edge 1's default alert.
    err = await asyncio.to_thread(handshake_error, "127.0.0.5", port, "gone.test", ca)
    assert isinstance(err, ssl.SSLEOFError), err


async def test_udp_listeners_of_one_port_in_two_groups(parts: Parts) -> None:
    port = free_udp_port_on((A, B))
    relay = await parts.edge(listeners=[{"kind": "udp", "listen": f"{A}:{port}", "group": "gw-a"},
                                        {"kind": "udp", "listen": f"{B}:{port}", "group": "gw-b"}],
                             limits=LIMITS)
    echoes = {}
    for label in ("a", "b"):
        transport, echo, echo_port = await udp_echo()
        parts.later(_close_later, transport)
        echoes[label] = echo
        await sidecar_process(parts, f"u{label}", tunnel_url(relay), token(ports_=[port]), [
            {"name": "dns", "match": {"services": ["udp"]},
             "backend": {"host": "127.0.0.1", "port": echo_port}}], listenerGroups=[f"gw-{label}"])
    await until_status(relay, lambda s: s["ports"].get(str(port)) == 2, "both sidecars connect")
    for host, n in ((A, 12), (B, 5)):
        for i in range(n):  # a new client (source port) each time: a new stream, routed again
            c = await udp_client(port, host)
            try:
                assert await c.ask(b"q%d" % i) == b"q%d" % i
            finally:
                c.close()
    assert (echoes["a"].received, echoes["b"].received) == (12, 5)


async def _close_later(transport: asyncio.DatagramTransport) -> None:
    transport.close()


def free_udp_port_on(hosts: tuple[str, ...]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no UDP port free on every address")


async def test_a_malformed_groups_header_is_refused_before_the_upgrade(parts: Parts) -> None:
    import aiohttp

    relay = await parts.edge()
    headers = {"X-Mproxy-Listener-Groups": "gw-a,not a group", "Authorization": f"Bearer {token(['a.test'])}"}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(tunnel_url(relay), headers=headers)
    assert info.value.status == 400
    assert info.value.headers is not None
    why = info.value.headers["X-Mproxy-Error"]
    assert "'not a group' is not a listener group name" in why and "edge.listenerGroups" in why
    assert 'mproxy_edge_tunnel_rejects_total{reason="bad_listener_groups"} 1.0' in await metrics_text(relay)


async def http_to(host: str, port: int, name: str) -> tuple[int, str, str]:
    """(status, body, X-Mproxy-Reason) of a GET with Host `name` to `host:port`."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{host}:{port}/", headers={"Host": name}, timeout=timeout) as resp:
        return resp.status, await resp.text(), resp.headers.get("X-Mproxy-Reason", "")


def web_routes(back: Any) -> list[dict[str, Any]]:
    return [{"name": "tls", "match": {"services": ["https"]},
             "backend": {"host": "127.0.0.1", "port": back.https_port}},
            {"name": "web", "match": {"services": ["http"]},
             "backend": {"host": "127.0.0.1", "port": back.http_port}},
            {"name": "echo", "match": {"services": ["tcp"]},
             "backend": {"host": "127.0.0.1", "port": back.echo_port}}]


async def group_edge(parts: Parts) -> tuple[Any, int, int, int]:
    http_port, tcp_port, tls_port = free_port((A, B, NONE)), free_port((A, B)), free_port((A, B))
    relay = await parts.edge(listeners=[
        {"kind": "tls", "listen": f"{A}:{tls_port}", "group": "gw-a", "tlsRefusal": "close"},
        {"kind": "tls", "listen": f"{B}:{tls_port}", "group": "gw-b", "tlsRefusal": "close"},
        {"kind": "http", "listen": f"{A}:{http_port}", "group": "gw-a"},
        {"kind": "http", "listen": f"{B}:{http_port}", "group": "gw-b"},
        {"kind": "http", "listen": f"{NONE}:{http_port}"},  # no group
        {"kind": "tcp", "listen": f"{A}:{tcp_port}", "group": "gw-a"},
        {"kind": "tcp", "listen": f"{B}:{tcp_port}", "group": "gw-b"},
    ], limits=LIMITS)
    return relay, http_port, tcp_port, tls_port


async def tls_any_name(host: str, port: int, name: str, ca: CertificateAuthority) -> bytes:
    """A TLS round trip with SNI `name`, the backend's certificate checked against the CA but not the
    name (the backend stands in for a connector that terminates TLS for any name on its listener)."""
    ctx = ca.client_context()
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=name)
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_a_token_that_lists_a_group_gets_every_name_and_port_of_its_listeners(parts: Parts) -> None:
    """A Gateway owns its address: the connector whose token lists gw-a answers names no grant names
    on gw-a's listeners (its route answers; a Gateway's HTTP router would 404). A token without the
    claim never captures such names, and gw-b's listeners stay gw-b's."""
    relay, http_port, tcp_port, tls_port = await group_edge(parts)
    url = tunnel_url(relay)
    # First a tunnel on gw-a whose token has no listenerGroups claim: only its own name, nothing more.
    back_s = await parts.backends(["app.test"], label="S")
    await sidecar_process(parts, "s", url, token(["app.test"]), web_routes(back_s), listenerGroups=["gw-a"])
    got = await until_status(relay, lambda s: s["names"].get("app.test") == 1,
                             "the unclaimed sidecar connects")
    assert [t["groupWide"] for t in got["tunnels"]] == [[]]
    assert (await http_to(A, http_port, "app.test"))[1].startswith("hello S host=app.test")
    code, body, reason = await http_to(A, http_port, "unknown.test")
    assert (code, reason) == (404, "no_tunnel") and "no tunnel" in body
    assert await tcp_echo(A, tcp_port, b"x") == b""  # no port granted: closed
    err = await asyncio.to_thread(handshake_error, A, tls_port, "unknown.test", back_s.ca)
    assert isinstance(err, ssl.SSLEOFError), err

    back_w = await parts.backends(["app.test"], label="W")
    await sidecar_process(parts, "w", url, token(listener_groups=["gw-a"]), web_routes(back_w))  # asks none
    got = await until_status(relay, lambda s: len(s["tunnels"]) == 2, "the gateway's sidecar connects")
    wide = [t for t in got["tunnels"] if t["groupWide"]]
    assert [(t["groupWide"], t["listenerGroups"], t["domains"]) for t in wide] == [(["gw-a"], ["gw-a"], [])]
    for name in ("unknown.test", "no.matching.host", "x.y.example.org"):
        code, body, _ = await http_to(A, http_port, name)
        assert (code, body) == (200, f"hello W host={name} path=/"), (code, body)
    assert await tcp_echo(A, tcp_port, b"any port") == b"any port"  # TCP too: any port of gw-a's
    assert await tls_any_name(A, tls_port, "unknown-example.org", back_w.ca) == b"W:ping"  # and any SNI
    # Not another group's listener, nor one without a group.
    for host in (B, NONE):
        assert (await http_to(host, http_port, "unknown.test"))[::2] == (404, "no_tunnel")
    assert await tcp_echo(B, tcp_port, b"y") == b""
    err = await asyncio.to_thread(handshake_error, B, tls_port, "unknown.test", back_w.ca)
    assert isinstance(err, ssl.SSLEOFError), err


async def test_a_specific_grant_wins_over_the_group_wide_one(parts: Parts) -> None:
    relay, http_port, *_ = await group_edge(parts)
    url = tunnel_url(relay)
    back_w = await parts.backends(["app.test"], label="W")
    back_s = await parts.backends(["app.test"], label="S")
    await sidecar_process(parts, "w", url, token(listener_groups=["gw-a"]), web_routes(back_w))
    await sidecar_process(parts, "s", url, token(["api.test"]), web_routes(back_s), listenerGroups=["gw-a"])
    await until_status(relay, lambda s: len(s["tunnels"]) == 2 and s["names"].get("api.test") == 1,
                       "both sidecars connect")
    for _ in range(10):  # not a balancing accident
        assert (await http_to(A, http_port, "v1.api.test"))[1].startswith("hello S host=v1.api.test")
        assert (await http_to(A, http_port, "www.shop.test"))[1].startswith("hello W host=www.shop.test")
    # It asked for gw-a only: its name is not served on gw-b.
    assert (await http_to(B, http_port, "api.test"))[::2] == (404, "no_tunnel")


async def test_a_group_wide_grant_is_forwarded_between_edges(parts: Parts) -> None:
    """The gateway's sidecar dials edge 1 only; edge 2 learns from the grants answer that edge 1 takes
    every client of gw-a and forwards such a client there; gw-b's stay refused on edge 2."""
    one, two = "127.0.0.2", "127.0.0.3"
    t1, t2, f1, f2, port = (free_port((one, two, "127.0.0.5", "127.0.0.6")) for _ in range(5))

    def peers(listen: str, other: str) -> dict[str, Any]:
        return {"listen": listen, "addresses": [other], "refreshSeconds": 0.2}

    edge1 = await parts.edge(id="edge-1", listeners=[], tunnel={"listen": f"{one}:{t1}"},
                             peers=peers(f"{one}:{f1}", f"{two}:{t2}"), limits=LIMITS)
    edge2 = await parts.edge(id="edge-2", tunnel={"listen": f"{two}:{t2}"},
                             peers=peers(f"{two}:{f2}", f"{one}:{t1}"), limits=LIMITS, listeners=[
        {"kind": "http", "listen": f"127.0.0.5:{port}", "group": "gw-a"},
        {"kind": "http", "listen": f"127.0.0.6:{port}", "group": "gw-b"},
    ])
    back_w = await parts.backends(["app.test"], label="W")
    await sidecar_process(parts, "w", f"ws://{one}:{t1}/tunnel", token(listener_groups=["gw-a"]),
                          web_routes(back_w))
    await until_status(edge1, lambda s: [t["groupWide"] for t in s["tunnels"]] == [["gw-a"]],
                       "the gateway's sidecar reaches edge 1")
    got = await until_status(
        edge2, lambda s: {p.get("id"): p.get("groups") for p in s["peering"]["peers"]}.get("edge-1") ==
        {"gw-a": {"domains": [], "ports": [], "all": True}}, "edge 2 learns edge 1 takes all of gw-a")
    assert got["tunnels"] == []  # edge 2 holds no tunnel itself
    for name in ("unknown.test", "no.matching.host"):
        code, body, _ = await http_to("127.0.0.5", port, name)
        assert (code, body) == (200, f"hello W host={name} path=/"), (code, body)
    assert (await http_to("127.0.0.6", port, "unknown.test"))[::2] == (404, "no_tunnel")
