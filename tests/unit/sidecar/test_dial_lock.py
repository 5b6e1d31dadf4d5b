"""A slot whose pool is busy dialling elsewhere (a blackholed address holds the dial lock for up to
DIAL_TIMEOUT) still dials after LOCK_WAIT instead of waiting its turn."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from tests.e2e.edge.harness import start_edge, token

from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar import tunnel_client
from mproxy.sidecar.app import Sidecar


async def test_a_held_dial_lock_delays_a_dial_by_lock_wait_only(tmp_path: Path) -> None:
    relay = await start_edge(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(token(["app.test"]))
    cfg = load_sidecar_config({"edge": {"urls": [f"ws://127.0.0.1:{relay.tunnel_port}/tunnel"],
                                        "tokenFile": str(token_file)}, "drainSeconds": 0})
    sidecar = Sidecar(cfg, registry=CollectorRegistry(), serve_http=False)
    await sidecar.start()
    pool = next(iter(sidecar.pools.values()))
    await pool.dial_lock.acquire()  # uncontended: taken before the slot's task first runs
    started = time.monotonic()
    try:
        while not sidecar.tunnels[0].connected:
            assert time.monotonic() - started < tunnel_client.LOCK_WAIT + 3, "the dial waited for the lock"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= tunnel_client.LOCK_WAIT - 0.1  # it did wait its turn first
    finally:
        pool.dial_lock.release()
        await sidecar.shutdown()
        await relay.close()
