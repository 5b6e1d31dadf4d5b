"""The edge with the real sidecar (`mproxy sidecar` processes): real TLS, HTTP and TCP clients; two
replicas share a name; one is killed (SIGKILL) and every new client goes to the other at once."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import yaml

from .harness import (
    TCP_PUBLIC_PORT,
    Backends,
    Parts,
    http_get,
    ports,
    status,
    stop_proc,
    tcp_roundtrip,
    tls_request,
    token,
    tunnel_url,
    upload_until_stalled,
)

pytestmark = pytest.mark.e2e


async def start_sidecar(parts: Parts, label: str, url: str, tok: str, back: Backends,
                        connections: int = 1) -> asyncio.subprocess.Process:
    """Run `mproxy sidecar` for `back`; it is stopped (SIGTERM, then SIGKILL) when the test ends."""
    tmp = parts.tmp
    token_file = tmp / f"token-{label}"
    token_file.write_text(tok)
    cfg = {
        "edge": {"urls": [url], "connectionsPerUrl": connections, "tokenFile": str(token_file),
                 "tokenIn": "handshake"},
        "routes": [
            {"name": "tls", "match": {"services": ["https"]}, "backend": {"host": "127.0.0.1",
                                                                        "port": back.https_port}},
            {"name": "web", "match": {"services": ["http"]}, "backend": {"host": "127.0.0.1",
                                                                       "port": back.http_port}},
            {"name": "echo", "match": {"services": ["tcp"]}, "backend": {"host": "127.0.0.1",
                                                                       "port": back.echo_port}},
        ],
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "logging": {"format": "text", "level": "warning"},
        "drainSeconds": 1,
    }
    path = tmp / f"sidecar-{label}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", "sidecar", "--config", str(path), "--no-reload",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    parts.later(stop_proc, proc)
    return proc


async def wait_tunnels(relay, name: str, want: int, within: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while (await status(relay))["names"].get(name, 0) != want:
        assert time.monotonic() < deadline, f"expected {want} tunnels for {name}: {await status(relay)}"
        await asyncio.sleep(0.05)


async def test_real_sidecar_carries_tls_http_tcp(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["shop.test", "www.shop.test"])
    await start_sidecar(parts, "A", tunnel_url(relay), token(["shop.test"], [TCP_PUBLIC_PORT]), back,
                        connections=2)
    await wait_tunnels(relay, "shop.test", 2)
    p = ports(relay)
    assert await tls_request(p["tls"], "www.shop.test", back.ca) == b"A:ping"
    code, body, _ = await http_get(p["http"], "shop.test")
    assert (code, body) == (200, "hello A host=shop.test path=/")
    payload = bytes(range(256)) * 8192  # 2 MiB
    assert await tcp_roundtrip(p["tcp"], payload, timeout=20) == payload
    # every stream is closed on both tunnels shortly after its client left
    deadline = time.monotonic() + 3
    while {t["streams"] for t in (await status(relay))["tunnels"]} != {0}:
        assert time.monotonic() < deadline, await status(relay)
        await asyncio.sleep(0.05)


async def test_two_sidecars_then_one_is_killed(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back_a = await parts.backends(["app.test"], label="A")
    back_b = await parts.backends(["app.test"], label="B", ca=back_a.ca)
    tok = token(["app.test"])
    proc_a = await start_sidecar(parts, "A", tunnel_url(relay), tok, back_a)
    proc_b = await start_sidecar(parts, "B", tunnel_url(relay), tok, back_b)
    procs = {b"A": proc_a, b"B": proc_b}
    await wait_tunnels(relay, "app.test", 2, within=30)
    p = ports(relay)
    answers = [await tls_request(p["tls"], "app.test", back_a.ca, b"x") for _ in range(10)]
    assert set(answers) == {b"A:x", b"B:x"} and 3 <= answers.count(b"A:x") <= 7, answers

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", p["tls"], ssl=back_a.ca.client_context(), server_hostname="app.test")
    writer.write(b"hold")
    first = await asyncio.wait_for(reader.read(100), 5)
    victim_label = first[:1]
    procs[victim_label].kill()  # SIGKILL: no goodbye
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(100), 8)
        assert data == b"", data
    except (ConnectionError, OSError):
        pass
    assert time.monotonic() - started < 5  # not left hanging
    writer.close()
    await wait_tunnels(relay, "app.test", 1, within=5)
    survivor = b"B" if victim_label == b"A" else b"A"
    answers = await asyncio.gather(
        *(tls_request(p["tls"], "app.test", back_a.ca, b"y") for _ in range(10))
    )
    assert answers == [survivor + b":y"] * 10


async def test_rolling_restart_loses_no_client(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back_a = await parts.backends(["app.test"], label="A")
    back_b = await parts.backends(["app.test"], label="B", ca=back_a.ca)
    tok = token(["app.test"])
    proc_a = await start_sidecar(parts, "A", tunnel_url(relay), tok, back_a)
    await start_sidecar(parts, "B", tunnel_url(relay), tok, back_b)
    await wait_tunnels(relay, "app.test", 2, within=30)
    p = ports(relay)
    stop = asyncio.Event()
    answers: list[bytes] = []
    failures: list[str] = []

    async def clients() -> None:
        while not stop.is_set():
            try:
                answers.append(await tls_request(p["tls"], "app.test", back_a.ca, b"z"))
            except Exception as exc:  # any failure is what this test is about
                failures.append(repr(exc))
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(clients())
    deadline = time.monotonic() + 15
    while not {b"A:z", b"B:z"} <= set(answers):  # both replicas are serving
        assert time.monotonic() < deadline and not failures, (answers, failures)
        await asyncio.sleep(0.05)
    proc_a.terminate()  # SIGTERM: the sidecar drains (E_SHUTTING_DOWN for new streams), then leaves
    assert await asyncio.wait_for(proc_a.wait(), 10) == 0
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert failures == []
    assert answers[-5:] == [b"B:z"] * 5


async def test_a_backend_that_stops_reading_pauses_only_its_client(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    held: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never read

    hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    back.echo_port = hole.sockets[0].getsockname()[1]
    await start_sidecar(parts, "A", tunnel_url(relay), token(["app.test"], [TCP_PUBLIC_PORT]), back)
    try:
        await wait_tunnels(relay, "app.test", 1, within=30)
        p = ports(relay)
        _reader, writer = await asyncio.open_connection("127.0.0.1", p["tcp"])
        sent = await upload_until_stalled(writer)
        # The sidecar paused this client; the edge stopped reading it: the upload is stuck well short
        # of 64 MiB, and the edge holds only a bounded amount for it.
        assert sent < 48 << 20
        session = next(iter(relay.sessions))
        assert session.mux is not None and session.mux.pauses_received >= 1
        assert not session.mux.connection_ends_message  # our sidecar said X-Mproxy-Peer: sidecar/1
        stream = next(iter(session.mux.streams.values()))
        assert stream.buffered <= 2 << 20
        # the same tunnel still serves other clients at once
        assert await tls_request(p["tls"], "app.test", back.ca) == b"A:ping"
        writer.transport.abort()
    finally:
        for w in held:
            w.close()
        hole.close()
