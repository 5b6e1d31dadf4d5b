"""Clients that misbehave or leave, through a real edge and a real sidecar process: malformed and oversize
request heads, an upload or a download abandoned mid-body (the backend side is released), too many
requests at once, and bodiless answers (HEAD, 204, 304) keeping a keep-alive connection in step."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from .conftest import DOMAIN, L7, backend, get, http_route

pytestmark = pytest.mark.e2e

MIB = 1 << 20


async def _start(l7: L7, http_backends, **router) -> object:  # type: ignore[no-untyped-def]
    a = await http_backends("A")
    await l7.start([http_route("web", "web")], [{"name": "web", **router, "routes": [
        {"name": "all", "rules": [{"backends": [backend(a)]}]}]}])
    return a


async def _raw(l7: L7, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}


async def test_bad_request_heads_are_answered_400(l7: L7, http_backends) -> None:
    a = await _start(l7, http_backends)
    answer = await _raw(l7, f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: abc\r\n\r\n".encode())
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), answer[:100]
    answer = await _raw(l7, f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Big: {'a' * 10000}\r\n\r\n".encode())
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:100]
    assert "bad request from a client" in l7.tail()
    assert a.requests == 0  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/fine"))[0] == 200


async def test_abandoned_upload_and_download_release_the_backend(l7: L7, http_backends) -> None:
    a = await _start(l7, http_backends)
    # upload: announce 64 MiB, send 1 MiB, leave
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    writer.write(f"POST /upload HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: {64 * MIB}\r\n\r\n".encode())
    writer.write(b"u" * MIB)
    await writer.drain()
    await asyncio.sleep(0)  # nothing to wait for: the point is leaving mid-body
    writer.close()
    # download: ask for 1 GiB, read 1 MiB, leave
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    writer.write(f"GET /download?size={1024 * MIB} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
    code, _ = await _head(reader)
    assert code == 200
    await reader.readexactly(MIB)
    writer.close()
    deadline = time.monotonic() + 15
    while a.unfinished < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"the backend still streams for a client that left:\n{l7.tail()}"
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 10
    while (await l7.sidecar_status())["httpRouters"][0]["active"] != 0:
        assert time.monotonic() < deadline, await l7.sidecar_status()
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/fine"))[0] == 200


async def test_requests_past_the_router_limit_get_503_at_once(l7: L7, http_backends) -> None:
    await _start(l7, http_backends, maxConcurrentRequests=2)
    async with aiohttp.ClientSession() as s:
        slow = [asyncio.ensure_future(get(s, l7, "/slow?s=3")) for _ in range(2)]
        deadline = time.monotonic() + 10
        while (await l7.sidecar_status())["httpRouters"][0]["active"] != 2:
            assert time.monotonic() < deadline, await l7.sidecar_status()
            await asyncio.sleep(0.05)
        started = time.monotonic()
        code, body, _ = await get(s, l7, "/x")
        assert code == 503 and "too many requests in progress" in str(body)
        assert time.monotonic() - started < 1.5
        assert [r[0] for r in await asyncio.gather(*slow)] == [200, 200]
        assert (await get(s, l7, "/x"))[0] == 200


async def test_bodiless_answers_keep_the_connection_in_step(l7: L7, http_backends) -> None:
    await _start(l7, http_backends)
    reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    try:
        writer.write(f"HEAD /download?size={MIB} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        code, fields = await _head(reader)
        assert code == 200 and fields["content-length"] == str(MIB), l7.tail()
        for status in (204, 304):
            writer.write(f"GET /status/{status} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
            code, fields = await _head(reader)
            assert code == status and "transfer-encoding" not in fields, fields
        writer.write(f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        code, fields = await _head(reader)
        body = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 10)
        assert code == 200 and b'"label": "A"' in body
    finally:
        writer.close()
