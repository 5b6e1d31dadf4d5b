"""HTTP routing at L7 through a real edge and a real sidecar process: host, path, header, method and query
matches with the Gateway API's precedence, weighted backends, filters, keep-alive, 404/500."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import aiohttp
import pytest

from .conftest import DOMAIN, HTTP_PORT, L7, HttpBackend, HttpBackends, backend, get, http_route

pytestmark = pytest.mark.e2e


def routers(a: Any, b: Any, c: Any) -> list[dict[str, Any]]:
    return [{"name": "web", "routes": [
        {"name": "shop-any", "rules": [
            {"backends": [backend(a)]},  # any path, any host: the catch-all of the hostless route
        ]},
        {"name": "shop-exact", "hostnames": [DOMAIN], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backends": [backend(a)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backends": [backend(b)]},
            {"matches": [{"path": {"type": "Exact", "value": "/api/exact"}}], "backends": [backend(c)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                          "headers": [{"name": "X-Env", "value": "canary"}]}], "backends": [backend(c)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}],
             "backends": [backend(c)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/q"},
                          "queryParams": [{"name": "v", "value": 2}]}], "backends": [backend(c)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/nobackend"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/invalid"}}],
             "backends": [{"status": 500}]},
        ]},
        {"name": "shop-wild", "hostnames": [f"*.{DOMAIN}"], "rules": [
            {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}],
             "backends": [backend(c)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/only"}}], "backends": [backend(b)]},
        ]},
    ]}]


async def test_requests_are_routed_by_host_path_header_method_and_query(l7: L7,
                                                                        http_backends: HttpBackends) -> None:
    a, b, c = await http_backends("A"), await http_backends("B"), await http_backends("C")
    await l7.start([http_route("web", "web")], routers(a, b, c))
    async with aiohttp.ClientSession() as s:
        async def who(path: str, host: str = DOMAIN, **kw: Any) -> Any:
            code, body, _ = await get(s, l7, path, host, **kw)
            return body["label"] if code == 200 and isinstance(body, dict) else code

        assert await who("/") == "A"
        assert await who("/apiary") == "A"  # a prefix matches whole segments only
        assert await who("/api") == "B"
        assert await who("/api/v1/x") == "B"  # longest prefix
        assert await who("/api/exact") == "C"  # Exact beats any prefix
        assert await who("/api/exact/more") == "B"
        assert await who("/api/x", headers={"X-Env": "canary"}) == "C"  # a header match beats none
        assert await who("/api/x", headers={"x-env": "other"}) == "B"
        assert await who("/api/x", method="POST") == "C"  # a method match beats none
        assert await who("/q?v=2") == "C"
        assert await who("/q?v=3") == "A"
        assert await who("/re/123") == "A"  # any PathPrefix (here /) beats a RegularExpression
        assert await who("/nobackend") == 500
        assert await who("/invalid") == 500
        # Hostnames: the wildcard route wins for a subdomain, and only its rules count: no fall-through.
        assert await who("/only/x", f"www.{DOMAIN}") == "B"
        assert await who("/re/123", f"www.{DOMAIN}") == "C"
        assert await who("/re/12a", f"www.{DOMAIN}") == 404  # the whole path must match
        assert await who("/", f"www.{DOMAIN}") == 404
        # A name no route lists (the edge still grants it: below shop.test) takes the hostless route.
        assert await who("/whatever", f"a.b.{DOMAIN}") == 404  # *.shop.test matches deeper names too
        code, body, resp = await get(s, l7, "/", f"www.{DOMAIN}")
        assert code == 404 and "no HTTP route" in str(body)
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert await l7.metric("mproxy_sidecar_http_requests_total",
                           {"router": "web", "route": "shop-exact", "code": "2xx"}) == 12
    assert await l7.metric("mproxy_sidecar_http_requests_total",
                           {"router": "web", "route": "(none)", "code": "4xx"}) == 4


async def test_weighted_backends_split_by_weight(l7: L7, http_backends: HttpBackends) -> None:
    a, b, z = await http_backends("A"), await http_backends("B"), await http_backends("Z")
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [{"name": "split", "rules": [
        {"backends": [backend(a, 3), backend(b, 1), backend(z, 0)]}]}]}])
    async with aiohttp.ClientSession() as s:
        seen: Counter[str] = Counter()
        for _ in range(20):
            answers = await asyncio.gather(*(get(s, l7, "/w") for _ in range(10)))
            seen.update(body["label"] for code, body, _ in answers if code == 200 and isinstance(body, dict))
    assert sum(seen.values()) == 200 and z.requests == 0, seen
    # 3:1 of 200 is 150:50; the binomial standard deviation is ~6, so +-25 never fails by chance.
    assert 125 <= seen["A"] <= 175, seen


async def test_filters_headers_redirect_rewrite_and_forwarded(l7: L7, http_backends: HttpBackends) -> None:
    a = await http_backends("A")
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/mod"}}], "backends": [backend(a)],
         "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "X-Set", "value": "new"}], "add": [{"name": "X-Add", "value": "two"}],
                "remove": ["X-Gone"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "X-Backend", "value": "hidden"}], "remove": ["X-Drop-Me"]}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/secure"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
        {"matches": [{"path": {"type": "Exact", "value": "/moved"}}], "filters": [
            {"type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere.test", "port": 8443,
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/landing"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v1/svc"}}], "backends": [backend(a)],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "hostname": "internal.svc",
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/full"}}], "backends": [backend(a)],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/replaced"}}}]},
    ]
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [{"name": "f", "rules": rules}]}])
    async with aiohttp.ClientSession() as s:
        sent = {"X-Set": "old", "X-Add": "one", "X-Gone": "1", "X-Forwarded-For": "198.51.100.7"}
        code, body, resp = await get(s, l7, "/mod?x=1", headers=sent)
        assert code == 200 and isinstance(body, dict), body
        h = body["headers"]
        assert h["x-set"] == ["new"] and h["x-add"] == ["one", "two"] and "x-gone" not in h
        assert h["host"] == [DOMAIN] and h["x-forwarded-host"] == [DOMAIN]
        assert h["x-forwarded-proto"] == ["http"]
        assert h["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]  # the edge's client address, appended
        assert "connection" not in h or h["connection"] != ["close"]
        assert body["path"] == "/mod?x=1"
        assert resp.headers["X-Backend"] == "hidden" and "X-Drop-Me" not in resp.headers

        code, _, resp = await get(s, l7, "/old/page?q=1")
        assert (code, resp.headers["Location"]) == (302, f"http://{DOMAIN}/new/page?q=1")
        code, _, resp = await get(s, l7, "/old")
        assert (code, resp.headers["Location"]) == (302, f"http://{DOMAIN}/new")
        code, _, resp = await get(s, l7, "/secure/x")
        assert (code, resp.headers["Location"]) == (301, f"https://{DOMAIN}/secure/x")
        code, _, resp = await get(s, l7, "/moved")
        assert (code, resp.headers["Location"]) == (302, "http://elsewhere.test:8443/landing")

        code, body, _ = await get(s, l7, "/v1/svc/items/7?a=b")
        assert code == 200 and isinstance(body, dict)
        assert body["path"] == "/items/7?a=b" and body["headers"]["host"] == ["internal.svc"]
        assert body["headers"]["x-forwarded-host"] == [DOMAIN]
        code, body, _ = await get(s, l7, "/v1/svc")
        assert isinstance(body, dict) and body["path"] == "/"
        code, body, _ = await get(s, l7, "/full/a/b")
        assert isinstance(body, dict) and body["path"] == "/replaced"
    assert HTTP_PORT == 80  # the listener's port is the well-known one: no port in the Locations above


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                    body: bytes = b"") -> tuple[int, bytes]:
    """One request on an open connection; the response read by its Content-Length."""
    method = "POST" if body else "GET"
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    code = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    assert all(line.lower() != "connection: close" for line in lines), head
    return code, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_keep_alive_routes_each_request_of_one_connection(l7: L7, http_backends: HttpBackends) -> None:
    a, b = await http_backends("A"), await http_backends("B")
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [
        {"name": "ra", "rules": [{"matches": [{"path": {"value": "/a"}}], "backends": [backend(a)]}]},
        {"name": "rb", "rules": [{"matches": [{"path": {"value": "/b"}}], "backends": [backend(b)]}]},
    ]}])
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    try:
        labels = []
        for path in ("/a", "/b", "/a", "/nothing", "/b", "/a"):
            code, data = await _exchange(reader, writer, path, b"body" if path == "/b" else b"")
            labels.append(code if code != 200 else data.split(b'"label": "')[1][:1].decode())
        assert labels == ["A", "B", "A", 404, "B", "A"]
    finally:
        writer.close()
    # one client connection: one stream through the tunnel
    assert await l7.metric("mproxy_sidecar_streams_opened_total",
                           {"route": "web", "client": "127.0.0.1"}) == 1


async def _ws_closed(b: HttpBackend, l7: L7) -> None:
    """Until the backend saw its WebSocket close (a function: mypy would narrow the attribute for good)."""
    deadline = asyncio.get_running_loop().time() + 10
    while b.ws_closed is None:
        assert asyncio.get_running_loop().time() < deadline, l7.tail()
        await asyncio.sleep(0.05)


async def test_websocket_upgrade_is_routed_and_relayed(l7: L7, http_backends: HttpBackends) -> None:
    a, b = await http_backends("A"), await http_backends("B")
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [{"name": "ws", "rules": [
        {"matches": [{"path": {"value": "/live"}}], "backends": [backend(b)], "filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                           "replacePrefixMatch": "/ws"}}}]},
        {"backends": [backend(a)]},
        {"matches": [{"path": {"value": "/refused"}}], "backends": [backend(a)],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/status/403"}}}]},
    ]}]}])
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(l7.url("/live/room"), headers={"Host": DOMAIN},
                                protocols=("other", "chat")) as ws:
            assert ws.protocol == "chat"  # the backend's choice, passed on
            await ws.send_str("hi")
            assert (await ws.receive_str(timeout=10)) == "B /ws/room: hi"
            blob = bytes(range(256)) * 4096  # 1 MiB, one message
            await ws.send_bytes(blob)
            assert (await ws.receive_bytes(timeout=10)) == blob
            await asyncio.wait_for(ws.ping(b"p"), 10)  # returns once the pong came back
            await ws.close(code=4001)
        await _ws_closed(b, l7)
        assert b.ws_closed == 4001, l7.tail()  # the client's close code reached the backend
        assert b.ws_headers["X-Forwarded-Host"] == DOMAIN and "X-Forwarded-For" in b.ws_headers
        async with s.ws_connect(l7.url("/live/x"), headers={"Host": DOMAIN}) as ws:
            await ws.send_str("bye")  # the backend closes: its code and reason reach the client
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4002, "done")
        b.ws_closed = None
        ws = await s.ws_connect(l7.url("/live/x"), headers={"Host": DOMAIN})
        await ws.send_str("x")
        assert (await ws.receive_str(timeout=10)) == "B /ws/x: x"
        ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # gone without a close frame: the backend
        # is closed too
        await _ws_closed(b, l7)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(l7.url("/refused"), headers={"Host": DOMAIN})
        assert refused.value.status == 403  # the backend's refusal, passed on
        assert (await get(s, l7, "/plain"))[0] == 200  # plain requests on the same router still work
