"""A real sidecar dialling a real edge that refuses its token: the reconnect reason is `auth_failed`
(a bad token), never `handshake_failed` (a broken edge or proxy), so alerts can tell the two apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar.app import Sidecar

from .harness import Parts, token, tunnel_url

pytestmark = pytest.mark.e2e


async def _reasons_after_refusals(parts: Parts, tmp: Path, tok: str, token_in: str) -> dict[str, float]:
    relay = await parts.edge()
    token_file = tmp / f"token-{token_in}"
    token_file.write_text(tok)
    cfg = load_sidecar_config({
        "edge": {"urls": [tunnel_url(relay)], "tokenFile": str(token_file), "tokenIn": token_in},
        "routes": [{"name": "echo", "match": {}, "backend": {"host": "127.0.0.1", "port": 9}}],
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.1},
        "logging": {"format": "text", "level": "warning"},
    })
    sidecar = Sidecar(cfg, config_path=None)
    await sidecar.start()
    parts.later(sidecar.shutdown)
    reg = sidecar.metrics.registry
    edge = sidecar.tunnels[0].edge
    reasons: dict[str, float] = {}
    async with asyncio.timeout(10):
        while reasons.get("auth_failed", 0) < 2:
            await asyncio.sleep(0.05)
            reasons = {s.labels["reason"]: s.value for m in reg.collect()
                       if m.name == "mproxy_sidecar_tunnel_reconnects" for s in m.samples
                       if s.name.endswith("_total") and s.labels["edge"] == edge}
    assert not sidecar.tunnels[0].connected
    return reasons


@pytest.mark.parametrize("token_in", ["header", "query"])
async def test_a_401_on_the_upgrade_is_auth_failed(parts, tmp_path, token_in) -> None:  # type: ignore[no-untyped-def]
    # Signed with another secret: the edge answers the upgrade with 401 (E_AUTH).
    reasons = await _reasons_after_refusals(parts, tmp_path, token(["shop.test"], secret=b"x" * 32), token_in)
    assert set(reasons) == {"auth_failed"}, reasons


async def test_an_expired_token_is_auth_failed(parts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reasons = await _reasons_after_refusals(parts, tmp_path, token(["shop.test"], ttl=60, now=1000), "header")
    assert set(reasons) == {"auth_failed"}, reasons
