"""Clients that misbehave or leave, through a real edge and a real sidecar process: malformed and oversize
request heads, an upload or a download abandoned mid-body (the backend side is released), too many
requests at once, and bodiless answers (HEAD, 204, 304) keeping a keep-alive connection in step."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import DOMAIN, L7, HttpBackends, backend, get, http_route

pytestmark = pytest.mark.e2e

MIB = 1 << 20


async def _start(l7: L7, http_backends, edge_limits=None, **router) -> object:  # type: ignore[no-untyped-def]
    a = await http_backends("A")
    await l7.start([http_route("web", "web")], [{"name": "web", **router, "routes": [
        {"name": "all", "rules": [{"backends": [backend(a)]}]}]}], edge_limits=edge_limits)
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


async def test_bad_request_heads_are_answered_400(l7: L7, http_backends: HttpBackends) -> None:
    a = await _start(l7, http_backends)
    answer = await _raw(l7, f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Length: abc\r\n\r\n".encode())
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), answer[:100]
    answer = await _raw(l7, f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Big: {'a' * 10000}\r\n\r\n".encode())
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:100]
    assert "bad request from a client" in l7.tail()
    assert a.requests == 0  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/fine"))[0] == 200


async def test_abandoned_upload_and_download_release_the_backend(l7: L7, http_backends: HttpBackends) -> None:
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


async def test_requests_past_the_router_limit_get_503_at_once(l7: L7, http_backends: HttpBackends) -> None:
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


async def test_bodiless_answers_keep_the_connection_in_step(l7: L7, http_backends: HttpBackends) -> None:
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


async def test_sigterm_lets_requests_finish_and_closes_idle_keep_alive_at_once(
    l7: L7, http_backends: HttpBackends
) -> None:
    a = await http_backends("A")
    await l7.start([http_route("web", "web")], [{"name": "web", "routes": [
        {"name": "all", "rules": [{"backends": [backend(a)]}]}]}], drainSeconds=15)
    assert l7.proc is not None
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
    try:
        idle_w.write(f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        code, fields = await _head(idle_r)
        await idle_r.readexactly(int(fields["content-length"]))
        assert code == 200 and fields.get("connection") != "close"  # kept alive, now idle
        busy_w.write(f"GET /slow?s=2 HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        deadline = time.monotonic() + 10
        while (await l7.sidecar_status())["httpRouters"][0]["active"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        started = time.monotonic()
        l7.proc.terminate()
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # the idle connection is closed at once
        assert time.monotonic() - started < 1.5
        code, fields = await _head(busy_r)  # the request in progress finishes, and closes its connection
        assert code == 200 and fields["connection"] == "close"
        assert await asyncio.wait_for(busy_r.readexactly(int(fields["content-length"])), 5) == b"slow"
        assert await asyncio.wait_for(l7.proc.wait(), 10) == 0
        assert time.monotonic() - started < 8  # not the whole drainSeconds (15)
    finally:
        idle_w.close()
        busy_w.close()


def _fds(pid: int) -> tuple[int, int]:
    """(all descriptors, Unix sockets: the streams' socket pairs) of a process."""
    unix = {line.split()[6] for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]}
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return len(links), sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in unix)


async def test_many_short_connections_leave_no_descriptors_behind(
    l7: L7, http_backends: HttpBackends
) -> None:
    await _start(l7, http_backends, edge_limits={"connectionRate": 10000, "connectionBurst": 10000})
    assert l7.proc is not None
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/warm"))[0] == 200
    deadline = time.monotonic() + 10
    while (await l7.sidecar_status())["streams"] != 0:  # the warm-up connection's stream is gone
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    before = _fds(l7.proc.pid)

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", l7.ports["http"])
        try:
            if i % 3 == 0:  # a full exchange
                writer.write(f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
                assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
            elif i % 3 == 1:  # a head cut in the middle
                writer.write(f"GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Half: ".encode())
                await writer.drain()
            else:  # a request left before its answer
                writer.write(f"GET /slow?s=2 HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
                await writer.drain()
        finally:
            writer.close()

    for batch in range(6):
        await asyncio.gather(*(one(batch * 50 + i) for i in range(50)))
    # Every socket pair is closed; what else stays open is the backend pool's idle keep-alive
    # connections (at most one per exchange that ran at once here).
    deadline = time.monotonic() + 15
    while (await l7.sidecar_status())["streams"] != 0 or _fds(l7.proc.pid)[1] != before[1]:
        assert time.monotonic() < deadline, (before, _fds(l7.proc.pid), await l7.sidecar_status())
        await asyncio.sleep(0.1)
    after = _fds(l7.proc.pid)
    print(f"descriptors before {before}, after 300 connections {after} (all, socket-pair ends)")
    assert after[0] <= before[0] + 50, (before, after)
    async with aiohttp.ClientSession() as s:
        assert (await get(s, l7, "/after"))[0] == 200
