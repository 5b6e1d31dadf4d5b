"""A relay that sends the real sidecar `error` frames with hundreds of distinct codes, from hundreds of
client addresses: the sidecar's series stay bounded (unknown codes fold into client_other, evicted
clients into client="other"), while the known codes keep their own value."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from mproxy.codec import Address, hello_message
from mproxy.tunnel import Heartbeat, Multiplexer, StreamHandler, run_tunnel

from .conftest import echo, serve_handler

pytestmark = [pytest.mark.e2e]

N = 300
KNOWN = ("ECONNRESET", "EPIPE", "E_NO_CONN")


async def test_remote_error_codes_and_clients_cannot_grow_the_series(backends, run_sidecar) -> None:  # type: ignore[no-untyped-def]
    echo_b = await backends(echo)
    sent = asyncio.Event()

    async def tunnel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        mux = Multiplexer(name="hostile-relay")
        mux.send_control(hello_message())

        async def abuse() -> None:
            for i in range(N):
                code = KNOWN[i] if i < len(KNOWN) else f"E_RANDOM_{i}_{'x' * (i % 40)}"
                s = mux.open_stream(Address("IPv4", f"198.51.{i // 250}.{i % 250 + 1}", "4000"),
                                    StreamHandler(), service="tcp", serviceport=1)
                s.write(b"hi")
                s.abort("client went away", code)
                if i % 50 == 49:
                    await asyncio.sleep(0.01)
            sent.set()

        task = asyncio.ensure_future(abuse())
        await run_tunnel(ws, mux, heartbeat=Heartbeat(1, 3))
        task.cancel()
        return ws

    runner, port = await serve_handler(tunnel)
    cfg = {
        "edge": {"urls": [f"ws://127.0.0.1:{port}/"]},
        "routes": [{"name": "echo", "match": {}, "backend": {"host": "127.0.0.1", "port": echo_b.port}}],
        "metrics": {"labels": "client", "maxClients": 20},
        "http": {"listen": "127.0.0.1:0"},
        "drainSeconds": 0.2,
    }
    try:
        async with run_sidecar(cfg) as sidecar:
            reg = sidecar.metrics.registry

            def errors() -> dict[tuple[str, str], float]:
                return {(s.labels["client"], s.labels["reason"]): s.value for m in reg.collect()
                        if m.name == "mproxy_sidecar_stream_errors" for s in m.samples
                        if s.name.endswith("_total")}

            async with asyncio.timeout(20):
                await sent.wait()
                while sum(errors().values()) < N:
                    await asyncio.sleep(0.05)
            got = errors()
            assert sum(got.values()) == N
            reasons = {reason for _, reason in got}
            known = {"client_econnreset", "client_epipe", "client_e_no_conn"}
            assert reasons == {*known, "client_other"}, reasons
            assert sum(v for (_, r), v in got.items() if r == "client_other") == N - len(KNOWN)
            assert len({client for client, _ in got}) <= 20 + 1  # maxClients, plus "other"
            series = sum(1 for m in reg.collect() for _ in m.samples)
            assert series < 400, f"{series} samples after {N} distinct codes and clients"
            assert sidecar.tunnels[0].connects == 1  # bad codes cost the relay nothing but its own streams
    finally:
        await runner.cleanup()
