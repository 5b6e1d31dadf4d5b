"""The tunnel endpoint: wss:// with the edge's certificate, a configurable path, dead-peer detection."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from mproxy.ca import CertificateAuthority

from .harness import ports, status, tls_request, token

pytestmark = pytest.mark.e2e


async def test_wss_endpoint_with_a_custom_path(parts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = CertificateAuthority.create("edge CA")
    cert, key = ca.issue(["edge.test", "127.0.0.1"]).write(tmp_path, "edge")
    relay = await parts.edge(tunnel={"listen": "127.0.0.1:0", "path": "/m/tunnel",
                                               "tls": {"certFile": str(cert), "keyFile": str(key)}})
    back = await parts.backends(["app.test"])
    url = f"wss://127.0.0.1:{relay.tunnel_port}/m/tunnel"
    dev = parts.device(url, token(["app.test"]), names={"app.test": back.https_port},
                       ssl_context=ca.client_context())
    await dev.start()
    assert await tls_request(ports(relay)["tls"], "app.test", back.ca) == b"A:ping"
    # plain ws:// or another path does not reach the tunnel endpoint
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(f"wss://127.0.0.1:{relay.tunnel_port}/other",
                                     ssl=ca.client_context())
        assert err.value.status == 404


async def test_a_silent_tunnel_is_declared_dead(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()  # heartbeat 1 s, timeout 3 s
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"ws://127.0.0.1:{relay.tunnel_port}/tunnel?access_token=" + token(["app.test"]),
        autoping=False,
    ):
        # We never read, so we never answer the edge's pings.
        assert (await status(relay))["names"] == {"app.test": 1}
        started = time.monotonic()
        while (await status(relay))["names"]:
            assert time.monotonic() - started < 8
            await asyncio.sleep(0.1)
        assert 2.5 < time.monotonic() - started < 8
