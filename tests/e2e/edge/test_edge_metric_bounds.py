"""A real edge under many distinct client names (Host headers) and many distinct bad tokens: names only
appear as labels when a grant declares them, reasons come from a fixed set, and the series count stays
bounded."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest

from .harness import http_get, metrics_text, ports, token, tunnel_url

pytestmark = pytest.mark.e2e

N = 120


async def test_many_names_and_bad_tokens_leave_bounded_series(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"connectionRate": 10_000, "connectionBurst": 10_000})
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.http_port})
    await dev.start()
    http = ports(relay)["http"]
    assert (await http_get(http, "app.test"))[0] == 200
    before = len(await metrics_text(relay))

    async def one(i: int) -> None:
        # Under the grant (*.app.test): routed, label is the granted domain. Outside: turned away.
        for host in (f"h{i}.app.test", f"h{i}.stranger.test"):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await http_get(http, host)

    for start in range(0, N, 20):
        await asyncio.gather(*(one(i) for i in range(start, start + 20)))
    async with aiohttp.ClientSession() as session:
        for i in range(N // 4):
            bad = token(["app.test"], secret=f"wrong-secret-{i}".encode() * 2)
            with contextlib.suppress(aiohttp.WSServerHandshakeError):
                ws = await session.ws_connect(tunnel_url(relay), headers={"Authorization": f"Bearer {bad}"})
                await ws.close()

    text = await metrics_text(relay)
    assert "stranger" not in text and not re.search(r'name="h\d+', text)
    names = set(re.findall(r'name="([^"]*)"', text))
    assert names <= {"app.test", "(other)", ""}, names
    assert f'mproxy_edge_rejects_total{{reason="no_tunnel"}} {N}.0' in text
    assert f'mproxy_edge_tunnel_rejects_total{{reason="bad_signature"}} {N // 4}.0' in text
    assert len(text) < before + 4000, "series grew with the number of distinct names or tokens"
