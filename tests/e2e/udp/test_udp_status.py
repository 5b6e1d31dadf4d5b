"""The edge's /status counts UDP clients: per listener (`clients`) and per tunnel (`udpClients`, by public
port), and the counts fall back when the clients go idle."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from .harness import PUBLIC_PORT, Stack, until

pytestmark = pytest.mark.e2e


async def status(stack: Stack) -> dict[str, Any]:
    assert stack.edge is not None
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{stack.edge.http_port}/status") as resp:
        return json.loads(await resp.text())  # type: ignore[no-any-return]


async def test_status_counts_udp_clients_per_listener_and_per_tunnel(stack: Stack) -> None:
    listener, _ = await stack.start_echo(listener={"idleTimeoutSeconds": 1.5})
    clients = [await stack.client(listener.port) for _ in range(3)]
    for i, c in enumerate(clients):
        assert await c.ask(b"%d" % i) == b"%d" % i
    st = await status(stack)
    udp = {"kind": "udp", "port": listener.port, "publicPort": PUBLIC_PORT}
    assert st["listeners"] == [{**udp, "clients": 3}]
    assert [t["udpClients"] for t in st["tunnels"]] == [{str(PUBLIC_PORT): 3}]
    assert st["tunnels"][0]["streams"] == 3
    assert stack.edge is not None
    edge = stack.edge

    def ended() -> bool:
        return not listener.clients and not any(s.mux and s.mux.streams for s in edge.sessions)

    await until(ended, 10, "the idle clients' streams to end")
    st = await status(stack)
    assert st["listeners"][0]["clients"] == 0
    assert [(t["udpClients"], t["streams"]) for t in st["tunnels"]] == [({}, 0)]
