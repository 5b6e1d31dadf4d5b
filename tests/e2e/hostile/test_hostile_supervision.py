"""Every long-lived task of both roles is supervised: killed (made to raise), it is logged once with the
error, counted, reflected in readiness and /status while it is down, and restarted.

Sidecar: a tunnel slot, the metrics flush loop, the config watcher. Edge: the bytes flusher and a tunnel's
guard. The roles run in process (the e2e harnesses' EdgeRelay and Sidecar) against real sockets; the fault
is injected by making one call raise once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from tests.ports import free_port

from mproxy.codec import hello_message, pack_control
from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar import tunnel_client
from mproxy.sidecar.app import Sidecar
from mproxy.tunnel.supervisor import Supervised

from ..edge.harness import Device, start_edge, token, tunnel_url
from .peers import HostileEdge

DOWN_AT_LEAST = 2.0  # the first restart delay in these tests: 1-2 s down, long enough to look at


def raise_once(real: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def fake(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real(*args, **kw)

    return fake


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


FAULT = "RuntimeError: injected fault"


async def watch_one_crash(sup: Supervised, ready: Callable[[], tuple[bool, str]],
                          caplog: pytest.LogCaptureFixture, error: str = FAULT) -> None:
    """`sup` crashes (the fault was injected), readiness says so while it is down, then it is back."""
    await wait_for(lambda: sup.down)
    ok, why = ready()
    assert not ok and error.split(":")[0] in why, why
    assert sup.restarts == 1
    failed = [r for r in caplog.records if r.name == "mproxy.supervisor" and sup.name in r.getMessage()]
    assert len(failed) == 1 and error in failed[0].getMessage()
    assert failed[0].exc_info is None  # one line, no traceback
    await wait_for(lambda: not sup.down)
    await wait_for(lambda: ready()[0])


@pytest.fixture
async def sidecar(tmp_path: Path, stack: Any) -> Sidecar:
    async def on_tunnel(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(pack_control(hello_message()))
        async for _ in ws:
            pass

    relay = await HostileEdge(on_tunnel).start()
    stack.push_async_callback(relay.close)
    cfg = {
        "edge": {"urls": [relay.url], "tokenIn": "handshake"},
        "routes": [{"name": "r", "match": {}, "backend": {"host": "127.0.0.1", "port": free_port()}}],
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": "127.0.0.1:0"},
        "drainSeconds": 1,
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    side = Sidecar(load_sidecar_config(cfg), config_path=str(path), serve_http=False, reload_interval=0.1)
    await side.start()
    stack.push_async_callback(side.shutdown)
    await wait_for(lambda: side.ready()[0])
    for sup in [*side.supervised, *(t.supervised for t in side.tunnels)]:
        assert sup is not None
        sup.initial = DOWN_AT_LEAST
    return side


def down(side: Sidecar, task: str) -> float | None:
    return side.metrics.registry.get_sample_value("mproxy_sidecar_tasks_down", {"task": task})


def restarts(side: Sidecar, task: str) -> float | None:
    return side.metrics.registry.get_sample_value("mproxy_sidecar_task_restarts_total", {"task": task})


async def test_a_sidecar_tunnel_slot_that_dies_is_logged_shown_and_restarted(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    slot = sidecar.tunnels[0]
    assert slot.supervised is not None
    monkeypatch.setattr(tunnel_client, "read_token", raise_once(tunnel_client.read_token))
    assert slot.mux is not None
    slot.mux.close("test: the edge went away")  # the slot dials again, and that attempt raises
    await wait_for(lambda: slot.supervised is not None and slot.supervised.down)
    assert slot.status()["state"] == "failed" and "injected fault" in (slot.status()["lastError"] or "")
    assert down(sidecar, "tunnel") == 1
    await watch_one_crash(slot.supervised, lambda: (sidecar.ready()[0], str(sidecar.status())), caplog)
    assert restarts(sidecar, "tunnel") == 1 and down(sidecar, "tunnel") == 0
    await wait_for(lambda: slot.connected)


async def test_the_sidecar_flush_loop_that_dies_is_restarted(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    flush = next(s for s in sidecar.supervised if s.kind == "flush")
    monkeypatch.setattr(sidecar, "_flush_metrics", raise_once(sidecar._flush_metrics))
    await watch_one_crash(flush, sidecar.ready, caplog)
    assert restarts(sidecar, "flush") == 1 and down(sidecar, "flush") == 0
    assert sidecar.status()["tasks"][0]["restarts"] == 1


async def test_the_sidecar_config_watcher_that_dies_is_restarted(
        sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    watch = next(s for s in sidecar.supervised if s.kind == "config_watcher")
    watcher = sidecar.watcher
    assert watcher is not None
    interval = watcher.interval
    watcher.interval = None  # type: ignore[assignment]  # its next sleep raises TypeError: the loop dies
    await wait_for(lambda: watch.down)
    watcher.interval = interval  # so the restarted loop runs (it starts 1-2 s from now)
    await watch_one_crash(watch, sidecar.ready, caplog, error="TypeError")
    assert restarts(sidecar, "config_watcher") == 1


async def test_the_edge_flusher_and_a_tunnel_guard_that_die_are_restarted(
        tmp_path: Path, stack: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await start_edge(tmp_path)
    stack.push_async_callback(relay.close)
    dev = Device(tunnel_url(relay), token(["app.test"]))
    stack.push_async_callback(dev.close)
    await dev.start()
    for sup in relay.supervised:
        sup.initial = DOWN_AT_LEAST

    flusher = next(s for s in relay.supervised if s.kind == "flusher")
    monkeypatch.setattr(relay, "flush_bytes", raise_once(relay.flush_bytes))
    await watch_one_crash(flusher, relay.ready, caplog)
    assert relay.metrics.registry.get_sample_value("mproxy_edge_task_restarts_total",
                                                   {"task": "flusher"}) == 1

    guard = next(s for s in relay.supervised if s.kind == "tunnel_guard")
    session = next(iter(relay.sessions))
    monkeypatch.setattr(session.control, "expire", raise_once(session.control.expire))
    await wait_for(lambda: guard.down)
    assert relay.metrics.registry.get_sample_value("mproxy_edge_tasks_down", {"task": "tunnel_guard"}) == 1
    assert relay.status()["tasksDown"], relay.status()
    await watch_one_crash(guard, relay.ready, caplog)
    assert relay.metrics.registry.get_sample_value("mproxy_edge_task_restarts_total",
                                                   {"task": "tunnel_guard"}) == 1
    assert relay.status()["tasksDown"] == []
    assert session in relay.sessions  # the tunnel itself was never touched
