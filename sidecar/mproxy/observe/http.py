"""The HTTP endpoints every role serves (aiohttp): /healthz, /readyz, /metrics, /status.

A role passes callables, so this module knows nothing about tunnels:
`ready() -> (bool, reason)`, `status() -> JSON-able dict`, and its own CollectorRegistry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["ObserveServer", "build_app"]

ReadyFn = Callable[[], tuple[bool, str]]
StatusFn = Callable[[], dict[str, Any]]


def build_app(registry: CollectorRegistry, ready: ReadyFn, status: StatusFn) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, reason = ready()
        text = "ready\n" if ok else f"not ready: {reason}\n"
        return web.Response(status=200 if ok else 503, text=text)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_view(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(status(), indent=2, default=str) + "\n",
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status_view)
    return app


class ObserveServer:
    """Serve the endpoints on host:port (port 0 = any free port; see `.port` after start())."""

    def __init__(
        self, registry: CollectorRegistry, ready: ReadyFn, status: StatusFn, *, host: str = "0.0.0.0",
        port: int = 9090,
    ) -> None:
        self._app = build_app(registry, ready, status)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and self._runner.addresses:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
