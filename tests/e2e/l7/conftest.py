"""Harness for the HTTP router tests: an in-process `mproxy edge` (EdgeRelay), a real `mproxy sidecar`
process with `httpRouters`, real aiohttp backends on loopback, real HTTP clients through the edge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import serve_app
from tests.e2e.edge.harness import Parts, ports, status, stop_proc, token, tunnel_url
from tests.e2e.faults.harness import get_text
from tests.ports import free_port

from mproxy.edge.relay import EdgeRelay

pytestmark = pytest.mark.e2e

DOMAIN = "shop.test"
HTTP_PORT = 80  # the edge's public ports: what the sidecar sees as serviceport (redirects use them)
HTTPS_PORT = 443
BLOCK = random.Random(7).randbytes(1 << 20)  # download bodies repeat this block


def block_digest(size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        h.update(BLOCK)
    return h.hexdigest()


class HttpBackend:
    """An aiohttp backend that answers what it saw as JSON; /upload hashes a streamed body, /download
    streams `size` bytes, /slow waits, /cut sends half a body and resets."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.requests = 0
        self.unfinished = 0  # uploads and downloads whose peer (the sidecar's pool) went away mid-body
        self.ws_headers: dict[str, str] = {}
        self.ws_closed: int | None = None

    async def start(self) -> HttpBackend:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/upload", self.upload)
        app.router.add_get("/download", self.download)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/cut", self.cut)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/ws/{tail:.*}", self.ws)
        app.router.add_route("*", "/{tail:.*}", self.info)
        self.runner, self.port = await serve_app(app)
        return self

    async def info(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        return web.json_response({"label": self.label, "method": request.method, "path": request.raw_path,
                                  "headers": headers, "body": body.decode(errors="replace")},
                                 headers={"X-Backend": self.label, "X-Drop-Me": "yes"})

    async def upload(self, request: web.Request) -> web.Response:
        h, size = hashlib.sha256(), 0
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                h.update(chunk)
                size += len(chunk)
        except (ConnectionError, aiohttp.ClientPayloadError, web.HTTPException, asyncio.CancelledError):
            self.unfinished += 1
            raise
        if request.content_length is not None and size != request.content_length:
            self.unfinished += 1
        return web.json_response({"sha256": h.hexdigest(), "size": size})

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        if request.method == "HEAD":  # aiohttp would send what we write (a framing error at the client)
            return resp
        try:
            for _ in range(size // len(BLOCK)):
                await resp.write(BLOCK)
        except (ConnectionError, asyncio.CancelledError):
            self.unfinished += 1
            raise
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        """Echoes each message, prefixed with the label and the path it was reached at."""
        ws = web.WebSocketResponse(protocols=("chat",), max_msg_size=8 << 20)
        await ws.prepare(request)
        self.ws_headers = dict(request.headers)
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "bye":
                await ws.close(code=4002, message=b"done")
                self.ws_closed = 4002
                return ws
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.label} {request.path}: {msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                self.ws_closed = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else -1
                return ws

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="slow")

    async def cut(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1 << 20
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class L7:
    """An edge and one sidecar process whose config the test can rewrite (the sidecar polls it)."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.tmp = parts.tmp
        self.relay: EdgeRelay | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.config_path = self.tmp / "sidecar.yaml"
        self.log = self.tmp / "sidecar.log"
        self.http_port = 0  # the sidecar's own HTTP endpoints
        self.cfg: dict[str, Any] = {}

    async def start(self, routes: list[dict[str, Any]], routers: list[dict[str, Any]], *,
                    edge_limits: dict[str, Any] | None = None, **extra: Any) -> L7:
        """The edge, then the sidecar with `routes` and `routers` (and `extra` top-level keys)."""
        self.relay = await self.parts.edge(limits=edge_limits or {}, listeners=[
            {"kind": "tls", "listen": "127.0.0.1:0", "publicPort": HTTPS_PORT},
            {"kind": "http", "listen": "127.0.0.1:0", "publicPort": HTTP_PORT},
            {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": 7022},
        ])
        token_file = self.tmp / "token"
        token_file.write_text(token([DOMAIN], [7022]))
        self.http_port = free_port()
        self.cfg = {
            "edge": {"urls": [tunnel_url(self.relay)], "tokenFile": str(token_file), "tokenIn": "handshake"},
            "routes": routes,
            "httpRouters": routers,
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 1,
            **extra,
        }
        self.config_path.write_text(yaml.safe_dump(self.cfg))
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mproxy", "sidecar", "--config", str(self.config_path),
                stdout=asyncio.subprocess.DEVNULL, stderr=err)
        self.parts.later(stop_proc, self.proc)
        deadline = time.monotonic() + 30
        while (await status(self.relay))["names"].get(DOMAIN, 0) < 1:
            assert self.proc.returncode is None, f"the sidecar exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no tunnel for {DOMAIN}:\n{self.tail()}"
            await asyncio.sleep(0.05)
        return self

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def ports(self) -> dict[str, int]:
        assert self.relay is not None
        return ports(self.relay)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"

    async def sidecar_status(self) -> dict[str, Any]:
        return json.loads(await get_text(self.http_port, "/status"))  # type: ignore[no-any-return]

    async def metric(self, name: str, labels: dict[str, str]) -> float:
        text = await get_text(self.http_port, "/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name}{labels} in the sidecar's /metrics")

    async def reload(self, **changes: Any) -> None:
        """Rewrite the config file and wait until the sidecar applied it (its reload count grows)."""
        before = (await self.sidecar_status())["config"]["reloads"]
        self.cfg = {**self.cfg, **changes}
        self.config_path.write_text(yaml.safe_dump(self.cfg))
        deadline = time.monotonic() + 15
        while (await self.sidecar_status())["config"]["reloads"] <= before:
            assert time.monotonic() < deadline, f"the sidecar did not reload:\n{self.tail()}"
            await asyncio.sleep(0.1)


async def get(session: aiohttp.ClientSession, l7: L7, path: str, host: str = DOMAIN,
              **kw: Any) -> tuple[int, dict[str, Any] | str, aiohttp.ClientResponse]:
    """GET through the edge's HTTP listener; JSON bodies decoded."""
    headers = {"Host": host, **kw.pop("headers", {})}
    async with session.request(kw.pop("method", "GET"), l7.url(path), headers=headers,
                               allow_redirects=False, timeout=aiohttp.ClientTimeout(total=20), **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text), resp
        except ValueError:
            return resp.status, text, resp


def http_route(name: str, router: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": {"services": ["http"], **match}, "http": router}


def backend(b: HttpBackend, weight: int = 1) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": b.port, "weight": weight}


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    async with contextlib.AsyncExitStack() as stack:
        yield Parts(tmp_path, stack)


HttpBackends = Callable[[str], Awaitable[HttpBackend]]  # the http_backends fixture: label -> backend


@pytest.fixture
async def http_backends() -> AsyncIterator[HttpBackends]:
    started: list[HttpBackend] = []

    async def make(label: str) -> HttpBackend:
        b = await HttpBackend(label).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def l7(parts: Parts) -> AsyncIterator[L7]:
    """The edge and sidecar of a test; afterwards its log must hold no traceback (every failure is
    answered or logged in one line)."""
    l7 = L7(parts)
    yield l7
    log = l7.log.read_text(errors="replace") if l7.log.exists() else ""
    assert "Traceback" not in log, log[-4000:]
