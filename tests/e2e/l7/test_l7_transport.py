"""The HTTP routers' transport through a real edge and a real sidecar process: 64 MiB bodies streamed both
ways in bounded memory, TLS termination with SNI choosing the certificate, backend failures answered
502/503/504 while the tunnel and other streams carry on, and hot reload of the routers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.e2e.edge.harness import status, tcp_roundtrip
from tests.e2e.faults.harness import rss_kib
from tests.ports import free_port

from mproxy.ca import CertificateAuthority
from mproxy.demo.backends import echo

from .conftest import BLOCK, DOMAIN, L7, HttpBackends, backend, block_digest, get, http_route

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM: line for pid {pid}")


async def test_64_mib_bodies_stream_both_ways_in_bounded_memory(l7: L7, http_backends: HttpBackends) -> None:
    a = await http_backends("A")
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [
        {"name": "bulk", "rules": [{"backends": [backend(a)]}]}]}])
    assert l7.proc is not None
    size = 64 * MIB
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/warm"))[0] == 200
        base = rss_kib(l7.proc.pid)

        async def body() -> Any:
            for _ in range(size // len(BLOCK)):
                yield BLOCK

        started = time.monotonic()
        async with s.post(l7.url("/upload"), data=body(),
                          headers={"Host": DOMAIN, "Content-Length": str(size)},
                          timeout=aiohttp.ClientTimeout(total=120)) as resp:
            assert resp.status == 200, await resp.text()
            got = await resp.json()
        up = time.monotonic() - started
        assert got == {"sha256": block_digest(size), "size": size}
        # chunked upload (no Content-Length): streamed the same way
        async with s.post(l7.url("/upload"), data=body(), headers={"Host": DOMAIN},
                          timeout=aiohttp.ClientTimeout(total=120)) as resp:
            assert (await resp.json()) == {"sha256": block_digest(size), "size": size}

        started = time.monotonic()
        h, n = hashlib.sha256(), 0
        async with s.get(l7.url(f"/download?size={size}"), headers={"Host": DOMAIN},
                         timeout=aiohttp.ClientTimeout(total=120)) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(size)
            async for chunk in resp.content.iter_chunked(MIB):
                h.update(chunk)
                n += len(chunk)
        down = time.monotonic() - started
        assert (n, h.hexdigest()) == (size, block_digest(size))
    grown = peak_kib(l7.proc.pid) - base
    print(f"64 MiB up {size / MIB / up:.0f} MiB/s, down {size / MIB / down:.0f} MiB/s; sidecar RSS "
          f"{base // 1024} MiB before, peak {grown // 1024} MiB above it")
    assert grown < 40 * 1024, f"the sidecar's peak RSS grew {grown} KiB moving 3 x 64 MiB: buffered"


async def test_https_is_terminated_and_sni_picks_the_certificate(l7: L7, http_backends: HttpBackends,
                                                                 tmp_path: Path) -> None:
    a = await http_backends("A")
    ca = CertificateAuthority.create("l7 test CA")
    first = ca.issue([f"a.{DOMAIN}"]).write(tmp_path, "a")
    second = ca.issue([f"b.{DOMAIN}", f"*.b.{DOMAIN}"]).write(tmp_path, "b")
    await l7.start(
        [{"name": "secure", "match": {"services": ["https"]}, "http": "secure"}],
        [{"name": "secure", "tls": {"certificates": [
            {"certFile": str(first[0]), "keyFile": str(first[1])},
            {"certFile": str(second[0]), "keyFile": str(second[1])}]},
          "routes": [{"name": "s", "rules": [{"backends": [backend(a)]}]}]}])
    port = l7.ports["tls"]

    async def served(sni: str) -> dict[str, Any]:
        ctx = ca.client_context()
        ctx.check_hostname = False  # the default certificate does not name an unknown host: look at it
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
        try:
            cert: dict[str, Any] = writer.get_extra_info("ssl_object").getpeercert()
            writer.write(f"GET /who HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b'"x-forwarded-proto": ["https"]' in answer
            return cert
        finally:
            writer.close()

    async def served_names(sni: str) -> list[str]:
        return [v for k, v in (await served(sni))["subjectAltName"] if k == "DNS"]

    assert await served_names(f"a.{DOMAIN}") == [f"a.{DOMAIN}"]
    assert await served_names(f"b.{DOMAIN}") == [f"b.{DOMAIN}", f"*.b.{DOMAIN}"]
    assert await served_names(f"x.b.{DOMAIN}") == [f"b.{DOMAIN}", f"*.b.{DOMAIN}"]
    assert await served_names(f"other.{DOMAIN}") == [f"a.{DOMAIN}"]  # the first certificate is the default
    # A verifying HTTPS client, with keep-alive, through the edge's TLS listener (SNI passthrough there).
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"https://127.0.0.1:{port}/x", server_hostname=f"b.{DOMAIN}",
                             headers={"Host": f"b.{DOMAIN}"}, ssl=ca.client_context()) as resp:
                assert resp.status == 200 and (await resp.json())["label"] == "A"
    # A renewed certificate replaces the files in place (a Secret's symlink swap): no config change needed.
    before = (await served(f"a.{DOMAIN}"))["serialNumber"]
    renewed = ca.issue([f"a.{DOMAIN}"]).write(tmp_path / "renewed", "a")
    for new, old in zip(renewed, first, strict=True):
        os.replace(new, old)
    deadline = time.monotonic() + 20
    while (await served(f"a.{DOMAIN}"))["serialNumber"] == before:
        assert time.monotonic() < deadline, f"the renewed certificate was not picked up:\n{l7.tail()}"
        await asyncio.sleep(0.2)
    assert "certificate files changed, reloaded" in l7.tail()


async def test_backend_failures_are_answered_and_the_tunnel_carries_on(l7: L7,
                                                                       http_backends: HttpBackends) -> None:
    a = await http_backends("A")
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    dead = free_port()  # nothing listens here
    rules = [
        {"matches": [{"path": {"value": "/down"}}], "backends": [{"host": "127.0.0.1", "port": dead}]},
        {"matches": [{"path": {"value": "/noname"}}],
         "backends": [{"host": "no-such-host.invalid", "port": 80}]},
        {"matches": [{"path": {"value": "/slow"}}], "backends": [backend(a)],
         "timeouts": {"request": "500ms"}},
        {"backends": [backend(a)]},
    ]
    try:
        await l7.start([http_route("web", "web"),
                        {"name": "echo", "match": {"services": ["tcp"]},
                         "backend": {"host": "127.0.0.1", "port": echo_server.sockets[0].getsockname()[1]}}],
                       [{"name": "web", "routes": [{"name": "f", "rules": rules}]}])
        assert l7.relay is not None
        connects = [t["connects"] for t in (await l7.sidecar_status())["tunnels"]]
        async with aiohttp.ClientSession() as s:
            # a long download in flight on its own connection while the others fail
            big = asyncio.ensure_future(s.get(l7.url(f"/download?size={16 * MIB}"), headers={"Host": DOMAIN}))
            code, body, _ = await get(s, l7, "/down")
            assert code == 503 and f"127.0.0.1:{dead} unreachable" in str(body), body
            code, body, _ = await get(s, l7, "/noname")
            assert code == 503 and "no-such-host.invalid:80 unreachable" in str(body), body
            started = time.monotonic()
            code, body, _ = await get(s, l7, "/slow?s=5")
            assert code == 504 and "within 0.5 s" in str(body) and time.monotonic() - started < 3, body
            # cut mid-body: the client is reset, not handed 1000 bytes as if they were the whole body
            with pytest.raises(aiohttp.ClientError):
                async with s.get(l7.url("/cut"), headers={"Host": DOMAIN}) as resp:
                    assert resp.status == 200
                    await resp.read()
            async with await big as resp:
                h = hashlib.sha256()
                async for chunk in resp.content.iter_chunked(MIB):
                    h.update(chunk)
                assert h.hexdigest() == block_digest(16 * MIB)
            assert (await get(s, l7, "/fine"))[0] == 200
        payload = bytes(range(256)) * 4096
        assert await tcp_roundtrip(l7.ports["tcp"], payload, timeout=20) == payload
        assert [t["connects"] for t in (await l7.sidecar_status())["tunnels"]] == connects  # never redialled
        assert (await status(l7.relay))["names"][DOMAIN] == 1
        assert await l7.metric("mproxy_sidecar_http_requests_total",
                               {"router": "web", "route": "f", "code": "5xx"}) == 3
    finally:
        echo_server.close()


async def test_hot_reload_rebuilds_routers_without_dropping_connections(l7: L7, http_backends: HttpBackends,
                                                                        tmp_path: Path) -> None:
    a, b = await http_backends("A"), await http_backends("B")
    routers = [{"name": "web", "routes": [{"name": "r1", "rules": [{"backends": [backend(a)]}]}]}]
    await l7.start([http_route("web", "web")], routers)
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])

    async def ask(path: str) -> tuple[int, bytes]:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:"))
        return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), 10)

    try:
        assert b'"label": "A"' in (await ask("/x"))[1]
        # New rules: /x goes to B, a new route r2 serves /new; the open connection routes with them.
        await l7.reload(httpRouters=[{"name": "web", "routes": [
            {"name": "r1", "rules": [{"backends": [backend(b)]}]},
            {"name": "r2", "rules": [{"matches": [{"path": {"type": "Exact", "value": "/new"}}],
                                      "filters": [{"type": "RequestRedirect", "requestRedirect": {
                                          "hostname": "moved.test"}}]}]}]}])
        assert b'"label": "B"' in (await ask("/x"))[1]
        assert (await ask("/new"))[0] == 302
        assert await l7.metric("mproxy_sidecar_http_requests_total",
                               {"router": "web", "route": "r2", "code": "3xx"}) == 1
        # A certificate that does not load refuses the reload; the routers in force keep serving.
        refused = await l7.metric("mproxy_sidecar_config_reloads_total", {"result": "refused"})
        cfg = dict(l7.cfg)
        cfg["httpRouters"] = [*cfg["httpRouters"], {"name": "broken", "tls": {"certificates": [
            {"certFile": str(tmp_path / "missing.crt"), "keyFile": str(tmp_path / "missing.key")}]}}]
        l7.config_path.write_text(yaml.safe_dump(cfg))
        deadline = time.monotonic() + 15
        while await l7.metric("mproxy_sidecar_config_reloads_total", {"result": "refused"}) == refused:
            assert time.monotonic() < deadline, l7.tail()
            await asyncio.sleep(0.1)
        last = (await l7.sidecar_status())["config"]["lastError"]
        assert "httpRouters[1].tls.certificates[0]" in last and "missing.crt" in last, last
        assert b'"label": "B"' in (await ask("/x"))[1]
        # Removing a route removes its series.
        await l7.reload(httpRouters=[{"name": "web", "routes": [
            {"name": "r1", "rules": [{"backends": [backend(a)]}]}]}])
        assert b'"label": "A"' in (await ask("/x"))[1]
        with pytest.raises(AssertionError, match="no sample"):
            await l7.metric("mproxy_sidecar_http_requests_total",
                            {"router": "web", "route": "r2", "code": "3xx"})
    finally:
        writer.close()
