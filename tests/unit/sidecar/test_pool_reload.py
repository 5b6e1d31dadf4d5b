"""A reloaded config that drops an edge URL drops its pool, its slots and its edges_* series."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar.app import Sidecar


def config(url: str):  # type: ignore[no-untyped-def]
    return load_sidecar_config({"edge": {"urls": [url]}, "drainSeconds": 0,
                                "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.1}})


async def test_a_dropped_url_takes_its_pool_and_series_with_it() -> None:
    old, new = "ws://127.0.0.1:1/old", "ws://127.0.0.1:1/new"
    registry = CollectorRegistry()
    sidecar = Sidecar(config(old), registry=registry, serve_http=False)
    await sidecar.start()
    try:
        await asyncio.sleep(0.1)
        assert f'mproxy_sidecar_edges_expected{{edge="{old}"}} 1.0' in generate_latest(registry).decode()
        sidecar.apply_config(config(new))
        await asyncio.sleep(0.1)
        text = generate_latest(registry).decode()
        assert list(sidecar.pools) == [new]
        assert f'mproxy_sidecar_edges_expected{{edge="{old}"}}' not in text
        assert f'mproxy_sidecar_edges_connected{{edge="{old}"}}' not in text
        assert f'mproxy_sidecar_edges_expected{{edge="{new}"}} 1.0' in text
    finally:
        await sidecar.shutdown()
