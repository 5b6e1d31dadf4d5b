"""The edge against a device written with the reference codec (tests/interop/node/device.js: npm
proxy-packer + ws, behaving like telebit.js v0.20): handshake, TLS/HTTP/TCP streams, flow control."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from .harness import (
    TCP_PUBLIC_PORT,
    http_get,
    ports,
    status,
    tcp_roundtrip,
    tls_request,
    token,
    tunnel_url,
    upload_until_stalled,
)

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

DEVICE = Path(__file__).resolve().parents[2] / "interop" / "node" / "device.js"


class NodeDevice:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, object]] = []

    @classmethod
    async def start(cls, node: str, url: str, tok: str, *args: str,
                    token_in: str = "handshake") -> NodeDevice:
        proc = await asyncio.create_subprocess_exec(
            node, str(DEVICE), "--url", url, "--token", tok, "--token-in", token_in, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ})
        dev = cls(proc)
        await dev.wait_for("ready")
        return dev

    async def wait_for(self, event: str, timeout: float = 10) -> dict[str, object]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = await self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"device.js exited before {event!r}: {err.decode()[-2000:]}")
            item = json.loads(line)
            self.events.append(item)
            if item.get("event") == event:
                return item  # type: ignore[no-any-return]
            if item.get("event") == "rejected" and event != "rejected":
                raise AssertionError(f"device.js was rejected: {item}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.mark.parametrize("token_in", ["handshake", "query", "basic"])
async def test_reference_device_carries_tls_http_tcp(parts, node_bin, token_in) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = await NodeDevice.start(
        node_bin, tunnel_url(relay), token(["app.test"], [TCP_PUBLIC_PORT]),
        "--name", f"app.test={back.https_port}", "--name", f"web.app.test={back.http_port}",
        "--port", f"{TCP_PUBLIC_PORT}={back.echo_port}", token_in=token_in)
    parts.later(dev.stop)
    p = ports(relay)
    assert await tls_request(p["tls"], "app.test", back.ca) == b"A:ping"
    code, body, _ = await http_get(p["http"], "web.app.test")
    assert (code, body) == (200, "hello A host=web.app.test path=/")
    payload = os.urandom(3 << 20)  # 3 MiB: several frames, both ways
    assert await tcp_roundtrip(p["tcp"], payload, timeout=20) == payload
    # concurrent clients over the one tunnel
    answers = await asyncio.gather(*(tls_request(p["tls"], "app.test", back.ca, b"c%d" % i)
                                     for i in range(8)))
    assert answers == [b"A:c%d" % i for i in range(8)]
    assert (await status(relay))["names"] == {"app.test": 1}
    # the device saw the edge's hello exactly as telebit-relay sends it
    hello = next(e for e in dev.events if e.get("event") == "control")
    assert hello["value"] == [1, "hello", [1], ["add_token", "delete_token", "auth", "authn", "authz"]]


async def test_reference_device_without_a_local_service_answers_an_error(parts, node_bin) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    # granted, but device.js has nothing for this name: it answers `error`, the client is closed
    dev = await NodeDevice.start(node_bin, tunnel_url(relay), token(["app.test"]),
                                 "--name", "other.test=1")
    parts.later(dev.stop)
    p = ports(relay)
    # device.js answers `error` E_NO_SERVICE; the client gets a 502 naming only the code
    code, body, headers = await http_get(p["http"], "app.test")
    assert code == 502 and headers["X-Mproxy-Reason"] == "backend_failed" and "E_NO_SERVICE" in body
    # and the tunnel still works afterwards (no stall like the reference's failed-connect bug)
    code, _, _ = await http_get(p["http"], "nothing.test")
    assert code == 404  # no tunnel grants nothing.test
    assert len((await status(relay))["tunnels"]) == 1


async def test_reference_device_with_a_bad_token(parts, node_bin) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    proc = await asyncio.create_subprocess_exec(
        node_bin, str(DEVICE), "--url", tunnel_url(relay), "--token", token(["a.test"], secret=b"nope"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    dev = NodeDevice(proc)
    parts.later(dev.stop)
    rejected = await dev.wait_for("rejected")
    assert rejected["error"]["code"] == "E_AUTH"  # type: ignore[index]
    closed = await dev.wait_for("closed")  # the edge closes it after the auth timeout
    assert closed["code"] == 1008


async def test_reference_device_honours_pause_and_resume(parts, node_bin) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge(limits={"streamBufferBytes": 65536})
    back = await parts.backends(["app.test"])
    dev = await NodeDevice.start(node_bin, tunnel_url(relay), token(["app.test"]),
                                 "--name", f"app.test={back.http_port}")
    parts.later(dev.stop)
    p = ports(relay)
    size = 24 << 20
    reader, writer = await asyncio.open_connection("127.0.0.1", p["http"])
    writer.write(f"GET /big?size={size} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".encode())
    await asyncio.sleep(1.5)  # read nothing: the edge pauses this client at device.js
    session = next(iter(relay.sessions))
    assert session.mux is not None and session.mux.pauses_sent >= 1
    assert session.mux.connection_ends_message  # device.js sent no X-Mproxy-Peer: telebit framing
    # meanwhile the same device serves another client
    code, _, _ = await http_get(p["http"], "app.test")
    assert code == 200
    data = await asyncio.wait_for(reader.read(), 30)  # resume: everything arrives, in order
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == size and body == b"x" * size
    writer.close()


async def test_edge_honours_pause_from_the_reference_device(parts, node_bin) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    held: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never read

    hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    hole_port = hole.sockets[0].getsockname()[1]
    dev = await NodeDevice.start(node_bin, tunnel_url(relay), token([], [TCP_PUBLIC_PORT]),
                                 "--port", f"{TCP_PUBLIC_PORT}={hole_port}")
    parts.later(dev.stop)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", ports(relay)["tcp"])
        sent = await upload_until_stalled(writer)
        session = next(iter(relay.sessions))
        assert session.mux is not None and session.mux.pauses_received >= 1  # device.js said pause
        assert sent < 48 << 20
        writer.transport.abort()
    finally:
        for w in held:
            w.close()
        hole.close()
