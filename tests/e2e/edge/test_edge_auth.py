"""Tunnel authentication on a real edge: every refusal, and no tunnel ever gets another's name."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from .harness import (
    metrics_text,
    ports,
    status,
    tls_request,
    token,
    tunnel_url,
)

pytestmark = pytest.mark.e2e


async def test_no_token_is_closed_after_the_auth_timeout(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    dev = parts.device(tunnel_url(relay), None, token_in="query")
    await dev.connect()
    assert dev.task is not None
    result = await asyncio.wait_for(dev.task, 5)
    assert result.code == 1008, result
    assert 'mproxy_edge_tunnel_rejects_total{reason="no_token"} 1.0' in await metrics_text(relay)


@pytest.mark.parametrize("token_in", ["query", "header"])
@pytest.mark.parametrize(("kind", "reason"), [("wrong_secret", "bad_signature"), ("expired", "expired"),
                                               ("garbage", "malformed")])
async def test_bad_url_or_header_tokens_get_401(parts, token_in, kind, reason) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    tok = {"wrong_secret": token(["a.test"], secret=b"not the secret"),
           "expired": token(["a.test"], ttl=10, now=1000),
           "garbage": "not-a-jwt"}[kind]
    dev = parts.device(tunnel_url(relay), tok, token_in=token_in)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await dev.connect()
    assert err.value.status == 401
    text = await metrics_text(relay)
    assert f'mproxy_edge_tunnel_rejects_total{{reason="{reason}"}} 1.0' in text
    assert (await status(relay))["tunnels"] == []


async def test_bad_add_token_is_answered_and_grants_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    dev = parts.device(tunnel_url(relay), token(["a.test"], secret=b"wrong"))
    await dev.connect()
    assert dev.task is not None
    result = await asyncio.wait_for(dev.task, 5)  # closed for lack of a valid token
    assert result.code == 1008
    replies = [c for c in dev.controls if isinstance(c, list) and c and c[0] == -7]
    assert replies and replies[0][1]["code"] == "E_AUTH"
    assert "signature" in replies[0][1]["message"]


async def test_a_tunnel_gets_only_what_its_token_grants(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["a.test", "b.test"])
    # The device would happily serve b.test too, but its token only grants a.test.
    dev = parts.device(tunnel_url(relay), token(["a.test"]), names={"a.test": back.https_port,
                                                                  "b.test": back.https_port})
    await dev.start()
    p = ports(relay)
    assert await tls_request(p["tls"], "a.test", back.ca) == b"A:ping"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_request(p["tls"], "b.test", back.ca)
    assert dev.streams_seen == 1
    assert (await status(relay))["names"] == {"a.test": 1}


async def test_expiry_is_honoured_while_connected(parts) -> None:  # type: ignore[no-untyped-def]
    import time

    relay = await parts.edge()
    dev = parts.device(tunnel_url(relay), token(["a.test"], ttl=2, now=time.time()))
    await dev.start()
    assert (await status(relay))["names"] == {"a.test": 1}
    assert dev.task is not None
    result = await asyncio.wait_for(dev.task, 6)
    assert result.code == 1008 and "expired" in result.detail
    assert (await status(relay))["names"] == {}


async def test_tunnel_count_is_capped(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"maxTunnels": 1})
    first = parts.device(tunnel_url(relay), token(["a.test"]))
    second = parts.device(tunnel_url(relay), token(["b.test"]))
    await first.start()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await second.connect()
    assert err.value.status == 503
    assert (await status(relay))["names"] == {"a.test": 1}
