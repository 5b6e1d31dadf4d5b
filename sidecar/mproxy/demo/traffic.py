"""Demo traffic: real clients through the edge's public ports (HTTPS with SNI, HTTP with Host, raw TCP),
counted per service, at a gentle pace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


@dataclass
class Tally:
    ok: dict[str, int] = field(default_factory=lambda: {"https": 0, "http": 0, "tcp": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"https": 0, "http": 0, "tcp": 0})
    bytes: int = 0
    last_error: str = ""

    @property
    def total_ok(self) -> int:
        return sum(self.ok.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True)
class Targets:
    https_name: str
    https_port: int
    http_name: str
    http_port: int
    tcp_port: int


class TrafficGenerator:
    def __init__(self, targets: Targets, ca: ssl.SSLContext, *, interval: float = 0.25) -> None:
        self.targets = targets
        self.ca = ca
        self.interval = interval
        self.tally = Tally()

    async def _https(self, session: aiohttp.ClientSession) -> int:
        t = self.targets
        # Connect to 127.0.0.1 but present the demo name: the edge routes on SNI, the backend's
        # certificate is verified against the demo CA (as `curl --resolve` does).
        resolver = _FixedResolver(t.https_name)
        connector = aiohttp.TCPConnector(ssl=self.ca, resolver=resolver, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as tls_session, tls_session.get(
            f"https://{t.https_name}:{t.https_port}/demo", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            body = await resp.read()
            resp.raise_for_status()
            return len(body)

    async def _http(self, session: aiohttp.ClientSession) -> int:
        t = self.targets
        async with session.get(f"http://127.0.0.1:{t.http_port}/demo", headers={"Host": t.http_name},
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.read()
            resp.raise_for_status()
            return len(body)

    async def _tcp(self, session: aiohttp.ClientSession) -> int:
        payload = os.urandom(16 * 1024)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.targets.tcp_port), 5)
        try:
            writer.write(payload)
            await writer.drain()
            got = b""
            while len(got) < len(payload):
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                if not chunk:
                    break
                got += chunk
            if got != payload:
                raise ConnectionError(f"echo returned {len(got)} of {len(payload)} bytes")
            return 2 * len(payload)
        finally:
            writer.close()

    async def one_round(self, session: aiohttp.ClientSession) -> None:
        for name, call in (("https", self._https), ("http", self._http), ("tcp", self._tcp)):
            try:
                self.tally.bytes += await call(session)
                self.tally.ok[name] += 1
            except (OSError, aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
                self.tally.failed[name] += 1
                self.tally.last_error = f"{name}: {type(exc).__name__}: {exc}"[:200]

    async def run(self, stop: asyncio.Event) -> None:
        # A new connection per request, so each one is routed (and counted) by the edge afresh.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            while not stop.is_set():
                await self.one_round(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)


class _FixedResolver(AbstractResolver):
    """Resolve the demo name to 127.0.0.1 (what `curl --resolve` does), anything else normally."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host != self.name:
            raise OSError(f"the demo client only resolves {self.name}")
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None
