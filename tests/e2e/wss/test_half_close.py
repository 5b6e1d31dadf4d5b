"""A half-closed stream whose peer never sends `end` back must not stay open in the sidecar (issue 11).

relay.js, like telebit-relay, answers the sidecar's `end` with socket.end() toward the client and sends
its own `end` only when the client ends too. A backend that half-closes after its answer, and a client
that keeps its side open, leave the sidecar's stream half-closed: it must close at the idle timeout and
be counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from tests.e2e.edge.harness import stop_proc

from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar.app import Sidecar

from .conftest import NODE, TRANSPORTS, Tls, _read_json_until

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

IDLE = 1.0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_half_closed_stream_is_closed_at_the_idle_timeout_and_counted(
        tmp_path: Path, node_bin: str, transport: str) -> None:
    held: list[asyncio.StreamWriter] = []

    async def answer_then_half_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(5)
        w.write(b"world")
        w.write_eof()  # done sending, still reading: the sidecar sends `end`
        held.append(w)

    backend = await asyncio.start_server(answer_then_half_close, "127.0.0.1", 0)
    tls = Tls(tmp_path) if transport == "wss" else None
    conf: dict[str, object] = {"host": "127.0.0.1", "wsPort": 0,
                               "listeners": [{"port": 0, "service": "tcp", "serviceport": 7022, "name": ""}]}
    if tls:
        conf["tls"] = {"cert": tls.cert_file, "key": tls.key_file}
    relay = await asyncio.create_subprocess_exec(
        node_bin, str(NODE / "relay.js"), json.dumps(conf), cwd=str(NODE), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    edge: dict[str, object] = {"urls": [f"{'wss' if tls else 'ws'}://localhost:"
                                        f"{(ready := await _read_json_until(relay, 'ready'))['wsPort']}/"]}
    if tls:
        edge["caFile"] = tls.ca_file
    sidecar = Sidecar(load_sidecar_config({
        "edge": edge,
        "routes": [{"name": "half", "match": {"ports": [7022]},
                    "backend": {"host": "127.0.0.1", "port": backend.sockets[0].getsockname()[1]}}],
        "limits": {"idleTimeoutSeconds": IDLE},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "warning"},
        "drainSeconds": 0.2,
    }), config_path=None)
    await sidecar.start()
    client: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(10):
            while not sidecar.tunnels[0].connected:
                await asyncio.sleep(0.02)
        r, client = await asyncio.open_connection("127.0.0.1", ready["listeners"][0]["port"])
        client.write(b"hello")
        async with asyncio.timeout(5):
            assert await r.read() == b"world"  # the relay passed the sidecar's end on as a half-close
        mux = sidecar.tunnels[0].mux
        assert mux is not None and len(mux.streams) == 1  # half-closed: we sent end, the relay did not
        started = time.monotonic()
        async with asyncio.timeout(IDLE + 5):
            while mux.streams:
                await asyncio.sleep(0.05)
        waited = time.monotonic() - started
        assert waited < IDLE + 2, waited
        errors = sidecar.metrics.registry.get_sample_value(
            "mproxy_sidecar_stream_errors_total", {"route": "half", "client": "127.0.0.1", "reason": "idle"})
        assert errors == 1
    finally:
        if client is not None:
            client.close()
        await sidecar.shutdown()
        await stop_proc(relay)
        for w in held:
            w.close()
        backend.close()
        with contextlib.suppress(Exception):
            await backend.wait_closed()
