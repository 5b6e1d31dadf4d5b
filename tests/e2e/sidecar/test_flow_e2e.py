"""Flow control, scale, reconnects, reload and malformed input, against the node reference relay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import yaml

from .conftest import (
    BackendFactory,
    RelayFactory,
    SidecarFactory,
    echo,
    route,
    sidecar_yaml,
    tagged_echo,
    tcp_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.interop]


async def _rtt(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> float:
    t0 = time.perf_counter()
    w.write(b"p")
    await asyncio.wait_for(r.readexactly(1), 5)
    return time.perf_counter() - t0


async def _settled(value: Callable[[], int], quiet: float = 0.6, timeout: float = 20.0) -> int:
    """`value()` once it has not changed for `quiet` seconds (fails after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = value(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {timeout:g} s (last {last})")


async def test_slow_backend_pauses_its_client_only(node_relay: RelayFactory, backends: BackendFactory,
                                                   run_sidecar: SidecarFactory) -> None:
    release = asyncio.Event()
    received = [0]

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()  # reads nothing until released
        while data := await r.read(1 << 20):
            received[0] += len(data)

    slow_b = await backends(slow)
    fast_b = await backends(echo)
    listeners = ({"service": "tcp", "serviceport": 1}, {"service": "tcp", "serviceport": 2})
    async with node_relay(*listeners) as relay:
        routes = [route("slow", slow_b.port, ports=[1]), route("fast", fast_b.port, ports=[2])]
        cfg = sidecar_yaml(relay, routes, limits={"streamBufferBytes": 65536})
        async with run_sidecar(cfg, relay=relay) as sidecar:
            fr, fw = await asyncio.open_connection("127.0.0.1", relay.ports[1])
            idle = sorted([await _rtt(fr, fw) for _ in range(20)])
            mark = relay.mark()
            _, sw = await asyncio.open_connection("127.0.0.1", relay.ports[0])
            blob = b"s" * (1 << 20)
            sent = 0

            async def pump() -> None:
                nonlocal sent
                while sent < 32 << 20:
                    sw.write(blob)
                    await sw.drain()
                    sent += len(blob)

            pumper = asyncio.ensure_future(pump())
            paused = await relay.wait_event(lambda e: e["event"] == "paused", start=mark)
            assert paused["client"].endswith(str(sw.get_extra_info("sockname")[1]))
            # The relay stopped reading that client: our writes stall far below 32 MiB. What was already
            # in flight (socket buffers, the relay's reads) still drains for a while on a loaded machine,
            # so wait for `sent` to stop moving rather than sampling it after a fixed sleep.
            stalled_at = await _settled(lambda: sent)
            assert stalled_at < 32 << 20
            await asyncio.sleep(0.3)
            assert sent == stalled_at
            # Meanwhile the other stream is unaffected: measure it while the slow one is paused.
            busy = sorted([await _rtt(fr, fw) for _ in range(20)])
            assert busy[-2] < max(0.05, 10 * idle[-2]), (idle, busy)
            # Memory stays bounded: the sidecar holds at most its buffer limits for the slow stream.
            mux = sidecar.tunnels[0].mux
            assert mux is not None
            stream = next(s for s in mux.streams.values() if s.route == "slow")
            handler = stream.handler
            assert handler.transport is not None  # type: ignore[attr-defined]
            assert handler.transport.get_write_buffer_size() <= 8 << 20  # type: ignore[attr-defined]
            release.set()
            await asyncio.wait_for(pumper, 20)
            assert await relay.wait_event(lambda e: e["event"] == "resumed", start=mark)
            assert sidecar.metrics.registry.get_sample_value(
                "mproxy_sidecar_pauses_total", {"route": "slow", "client": "127.0.0.1", "direction": "relay"}
            ) is not None
            sw.close()
            fw.close()


async def test_relay_pause_stops_reading_the_backend(node_relay: RelayFactory, backends: BackendFactory,
                                                     run_sidecar: SidecarFactory) -> None:
    written = [0]
    done = asyncio.Event()

    async def firehose(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        chunk = b"f" * 65536
        try:
            while written[0] < 64 << 20:
                w.write(chunk)
                await w.drain()
                written[0] += len(chunk)
        finally:
            done.set()

    b = await backends(firehose)
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("hose", b.port)], limits={"streamBufferBytes": 65536})
        async with run_sidecar(cfg, relay=relay):
            mark = relay.mark()
            r, w = await asyncio.open_connection("127.0.0.1", relay.ports[0], limit=1 << 16)
            transport = cast(asyncio.Transport, w.transport)  # typeshed says WriteTransport
            transport.pause_reading()  # a client that does not read
            await relay.wait_event(lambda e: e["event"] == "pause_sent", start=mark)
            await asyncio.sleep(0.5)
            first = written[0]
            await asyncio.sleep(0.5)
            # The backend is stalled well before 64 MiB: the sidecar stopped reading it.
            assert written[0] == first < 48 << 20, (first, written[0])
            transport.resume_reading()
            total = 0
            async with asyncio.timeout(30):
                while total < 64 << 20:
                    data = await r.read(1 << 20)
                    assert data
                    total += len(data)
            await asyncio.wait_for(done.wait(), 5)
            await relay.wait_event(lambda e: e["event"] == "resume_sent", start=mark)
            w.close()


async def test_a_thousand_concurrent_streams(node_relay: RelayFactory, backends: BackendFactory,
                                             run_sidecar: SidecarFactory) -> None:
    b = await backends(echo)
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)],
                           limits={"maxStreamsPerTunnel": 2000, "maxStreamsPerClient": 2000})
        async with run_sidecar(cfg, relay=relay) as sidecar:
            conns = []
            for i in range(1000):
                conns.append(await asyncio.open_connection("127.0.0.1", relay.ports[0]))
                if i % 100 == 99:
                    await asyncio.sleep(0)
            for i, (_, w) in enumerate(conns):
                w.write(b"%04d" % i)
            async with asyncio.timeout(60):
                got = await asyncio.gather(*(r.readexactly(4) for r, _ in conns))
            assert got == [b"%04d" % i for i in range(1000)]
            mux = sidecar.tunnels[0].mux
            assert mux is not None and len(mux.streams) == 1000
            for _, w in conns:
                w.close()
            async with asyncio.timeout(20):
                while mux.streams:
                    await asyncio.sleep(0.05)


async def test_reconnects_after_the_relay_restarts(node_relay: RelayFactory, backends: BackendFactory,
                                                   run_sidecar: SidecarFactory) -> None:
    b = await backends(tagged_echo(b"e"))
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)])
        async with run_sidecar(cfg, relay=relay) as sidecar:
            def connected() -> bool:
                return sidecar.tunnels[0].connected

            assert await tcp_roundtrip(relay.ports[0], b"1") == b"e:1"
            await relay.stop()
            async with asyncio.timeout(5):
                while connected():
                    await asyncio.sleep(0.02)
            assert not sidecar.ready()[0]
            await asyncio.sleep(0.5)  # a few failed attempts (connection refused), with backoff
            await relay.start()  # same ports
            await relay.wait_tunnels(1)
            async with asyncio.timeout(5):
                while not connected():
                    await asyncio.sleep(0.02)
            assert await tcp_roundtrip(relay.ports[0], b"2") == b"e:2"
            reg = sidecar.metrics.registry
            edge = sidecar.tunnels[0].edge
            assert (reg.get_sample_value("mproxy_sidecar_tunnel_reconnects_total",
                                         {"edge": edge, "reason": "peer_closed"}) or 0) >= 1
            assert (reg.get_sample_value("mproxy_sidecar_tunnel_reconnects_total",
                                         {"edge": edge, "reason": "connect_failed"}) or 0) >= 1
            # Backoff, never a tight loop: a handful of attempts in ~0.5 s, not hundreds.
            assert sidecar.tunnels[0].connects == 2


async def test_reload_with_streams_in_flight(node_relay: RelayFactory, backends: BackendFactory,
                                             run_sidecar: SidecarFactory, tmp_path: Path) -> None:
    old_b = await backends(tagged_echo(b"old"))
    new_b = await backends(tagged_echo(b"new"))
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("app", old_b.port)])
        async with run_sidecar(cfg, relay=relay) as sidecar:
            r, w = await asyncio.open_connection("127.0.0.1", relay.ports[0])
            w.write(b"a")
            assert await asyncio.wait_for(r.readexactly(5), 5) == b"old:a"
            path = tmp_path / "sidecar.yaml"
            # A bad config first: refused, the old one kept.
            path.write_text("edge: {urls: []}\n")
            async with asyncio.timeout(5):
                while not (sidecar.watcher and sidecar.watcher.rejected):
                    await asyncio.sleep(0.05)
            assert "edge.urls" in (sidecar.status()["config"]["lastError"] or "")
            assert sidecar.metrics.registry.get_sample_value("mproxy_sidecar_config_reloads_total",
                                                             {"result": "refused"}) == 1
            assert await tcp_roundtrip(relay.ports[0], b"b") == b"old:b"
            cfg["routes"] = [route("app", new_b.port)]
            path.write_text(yaml.safe_dump(cfg))
            async with asyncio.timeout(5):
                while sidecar.watcher is None or sidecar.watcher.reloads < 1:
                    await asyncio.sleep(0.05)
            # The stream in flight keeps its backend; new streams take the new route.
            w.write(b"c")
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"c"
            assert await tcp_roundtrip(relay.ports[0], b"d") == b"new:d"
            assert sidecar.tunnels[0].connects == 1  # the tunnel was not dropped
            w.close()


async def test_malformed_frames_close_that_tunnel_then_it_reconnects(
        node_relay: RelayFactory, backends: BackendFactory, run_sidecar: SidecarFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    b = await backends(tagged_echo(b"e"))
    caplog.set_level(logging.INFO)
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)], edge={"connectionsPerUrl": 2})
        async with run_sidecar(cfg, relay=relay, tunnels=2) as sidecar:
            # A stream on each tunnel (the relay round-robins new clients).
            streams = [await asyncio.open_connection("127.0.0.1", relay.ports[0]) for _ in range(2)]
            for r, w in streams:
                w.write(b"x")
                assert await asyncio.wait_for(r.readexactly(3), 5) == b"e:x"
            mark = relay.mark()
            await relay.command(cmd="stats")
            stats = await relay.wait_event(lambda e: e["event"] == "stats", start=mark)
            victim = stats["tunnelIds"][0]
            mark = relay.mark()
            await relay.command(cmd="inject", tunnel=victim, hex="fe00" + "41" * 10)  # header length 0
            closed = await relay.wait_event(lambda e: e["event"] == "tunnel" and e["state"] == "closed",
                                            start=mark)
            assert closed["tunnel"] == victim and closed["code"] == 1002
            assert "header length 0" in closed["reason"]
            await relay.wait_tunnels(2)  # it reconnected
            # The other tunnel's stream is untouched: exactly one of the two streams survived.
            alive = 0
            for r, w in streams:
                w.write(b"y")
                try:
                    got = await asyncio.wait_for(r.read(10), 2)
                except (ConnectionError, TimeoutError):
                    got = b""
                alive += got == b"y"
                w.close()
            assert alive == 1
            assert await tcp_roundtrip(relay.ports[0], b"z") == b"e:z"
            assert sum(t.connects for t in sidecar.tunnels) == 3
    text = caplog.text
    assert "protocol_error" in text and "Traceback" not in text
    assert not [r for r in caplog.records if r.exc_info]


async def test_token_modes_and_refusal(node_relay: RelayFactory, backends: BackendFactory,
                                       run_sidecar: SidecarFactory, tmp_path: Path) -> None:
    b = await backends(tagged_echo(b"e"))
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    async with node_relay({"service": "tcp", "serviceport": 1}, token="s3cret-token") as relay:
        for mode in ("handshake", "query", "header"):
            cfg = sidecar_yaml(relay, [route("echo", b.port)],
                               edge={"tokenIn": mode, "tokenFile": str(token_file)})
            async with run_sidecar(cfg, relay=relay):
                assert await tcp_roundtrip(relay.ports[0], mode.encode()) == b"e:" + mode.encode()
        token_file.write_text("wrong")
        cfg = sidecar_yaml(relay, [route("echo", b.port)], edge={"tokenFile": str(token_file)})
        async with run_sidecar(cfg) as sidecar:
            async with asyncio.timeout(5):
                while not (sidecar.tunnels[0].last_error or "").startswith("the edge refused"):
                    await asyncio.sleep(0.02)
            status = sidecar.status()
            assert "E_AUTH" in status["tunnels"][0]["lastError"]
            assert "wrong" not in str(status)  # never the token itself


async def test_stream_limits_answer_the_client_and_count(node_relay: RelayFactory, backends: BackendFactory,
                                                         run_sidecar: SidecarFactory) -> None:
    b = await backends(echo)
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)], limits={"maxStreamsPerClient": 2})
        async with run_sidecar(cfg, relay=relay) as sidecar:
            held = []
            for _ in range(2):
                r, w = await asyncio.open_connection("127.0.0.1", relay.ports[0])
                w.write(b"k")
                assert await asyncio.wait_for(r.readexactly(1), 5) == b"k"
                held.append(w)
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[0], b"third") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "E_LIMIT" and "client address" in err["message"]
            status = sidecar.status()  # also flushes the tunnel's refusal counts into the metrics
            assert status["tunnels"][0]["refused"] == {"E_LIMIT": 1}
            assert sidecar.metrics.registry.get_sample_value(
                "mproxy_sidecar_streams_refused_total", {"reason": "limit"}) == 1
            assert sidecar.tunnels[0].connects == 1  # the tunnel stayed up
            for w in held:
                w.close()


async def test_reload_adds_and_drains_tunnel_connections(node_relay: RelayFactory, backends: BackendFactory,
                                                         run_sidecar: SidecarFactory, tmp_path: Path) -> None:
    b = await backends(tagged_echo(b"e"))
    async with node_relay({"service": "tcp", "serviceport": 1}) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)], drainSeconds=0.5)
        async with run_sidecar(cfg, relay=relay) as sidecar:
            path = tmp_path / "sidecar.yaml"
            cfg["edge"]["connectionsPerUrl"] = 2
            path.write_text(yaml.safe_dump(cfg))
            await relay.wait_tunnels(2)
            assert sorted(t.index for t in sidecar.tunnels) == [0, 1]
            mark = relay.mark()
            cfg["edge"]["connectionsPerUrl"] = 1
            path.write_text(yaml.safe_dump(cfg))
            closed = await relay.wait_event(lambda e: e["event"] == "tunnel" and e["state"] == "closed",
                                            start=mark)
            assert closed["code"] == 1001
            async with asyncio.timeout(5):
                while len(sidecar.tunnels) != 1:
                    await asyncio.sleep(0.02)
            assert sidecar.tunnels[0].index == 0 and sidecar.tunnels[0].connects == 1
            assert await tcp_roundtrip(relay.ports[0], b"ok") == b"e:ok"
