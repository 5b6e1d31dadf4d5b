"""The demo's sample backends: an HTTPS site (its own certificate from the demo CA), an HTTP site and a
TCP echo service, all on loopback. They stand in for the cluster Services a sidecar routes to."""

from __future__ import annotations

import asyncio
import contextlib
import html
import ssl
from dataclasses import dataclass, field

from aiohttp import web

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mproxy demo</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Hello from behind the tunnel</h1>
<p>This page is served by a {kind} backend that has no public address. Your request reached it through
the mproxy edge relay, an M-PROXY tunnel over WebSocket, and the sidecar that dialled the edge.</p>
<p>Host: <code>{host}</code> &middot; path: <code>{path}</code> &middot; client seen by the backend:
<code>{peer}</code></p>
<p>{tls_note}</p>
</body></html>
"""


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The TCP echo service: send back every byte until the client closes (the e2e tests use it too)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class DemoBackends:
    https_port: int = 0
    http_port: int = 0
    echo_port: int = 0
    requests: dict[str, int] = field(default_factory=lambda: {"https": 0, "http": 0, "tcp": 0})
    _runners: list[web.AppRunner] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self, tls: ssl.SSLContext) -> None:
        self.https_port = await self._site("https", tls)
        self.http_port = await self._site("http", None)
        server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self._servers.append(server)
        self.echo_port = server.sockets[0].getsockname()[1]

    def _app(self, kind: str) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            self.requests[kind] += 1
            note = ("TLS was not terminated by the edge: the certificate you see is the backend's own."
                    if kind == "https" else "Plain HTTP, routed by the edge on the Host header.")
            body = PAGE.format(kind=kind.upper(), host=html.escape(request.host),
                               path=html.escape(request.path), peer=html.escape(str(request.remote)),
                               tls_note=note)
            return web.Response(text=body, content_type="text/html")

        app = web.Application()
        app.router.add_get("/{tail:.*}", page)
        return app

    async def _site(self, kind: str, tls: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(self._app(kind), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self._runners.append(runner)
        port: int = runner.addresses[0][1]
        return port

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests["tcp"] += 1
        await echo(reader, writer)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
