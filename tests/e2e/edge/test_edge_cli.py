"""`mproxy edge` as a real process: config errors are one clear line; SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from .harness import SECRET, Device, stop_proc, tls_request, token

pytestmark = pytest.mark.e2e


def test_bad_config_is_one_clear_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("auth: {secretFile: /nonexistent/secret}\nlisteners: [{kind: tls, listen: 'x'}]\n")
    out = subprocess.run([sys.executable, "-m", "mproxy", "edge", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "listeners[0].listen" in out.stderr and "Traceback" not in out.stderr
    cfg.write_text("auth: {secretFile: /nonexistent/secret}\n")
    out = subprocess.run([sys.executable, "-m", "mproxy", "edge", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read the token secret file" in out.stderr
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    cfg.write_text(f"auth: {{secretFile: {secret}}}\nlisteners: [{{kind: tls, listen: ':443'}}]\n")
    out = subprocess.run([sys.executable, "-m", "mproxy", "edge", "--config", str(cfg), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "is valid (1 listeners)" in out.stdout


async def test_edge_process_serves_and_drains_on_sigterm(parts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"""
auth: {{secretFile: {secret}}}
listeners: [{{kind: tls, listen: "127.0.0.1:0"}}]
tunnel: {{listen: "127.0.0.1:0"}}
http: {{listen: "127.0.0.1:0"}}
logging: {{format: json, level: info}}
drainSeconds: 5
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", "edge", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    parts.later(stop_proc, proc)
    back = await parts.backends(["cli.test"])
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert line.startswith("mproxy edge ready"), line
    fields = dict(part.split("=") for part in line.split()[3:])
    tok = token(["cli.test"])
    dev = parts.device(f"ws://127.0.0.1:{fields['tunnel']}/", tok, names={"cli.test": back.https_port})
    await dev.start()
    assert await tls_request(int(fields["tls"]), "cli.test", back.ca) == b"A:ping"
    # a client in the middle of a conversation when SIGTERM arrives still finishes it
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(fields["tls"]), ssl=back.ca.client_context(), server_hostname="cli.test")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    writer.write(b"during drain")
    assert await asyncio.wait_for(reader.read(100), 5) == b"A:during drain"
    writer.close()
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert time.monotonic() - started < 10
    assert proc.stderr is not None
    logs = (await proc.stderr.read()).decode()
    assert tok not in logs and "draining" in logs


async def test_drain_turns_readyz_and_new_tunnels_away(parts) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    from .harness import ports, tunnel_url

    relay = await parts.edge(drainSeconds=3)
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"]), names={"app.test": back.https_port})
    await dev.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 200
        # one client in the middle of a conversation keeps the drain waiting
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", ports(relay)["tls"], ssl=back.ca.client_context(), server_hostname="app.test")
        writer.write(b"a")
        assert await asyncio.wait_for(reader.read(10), 5) == b"A:a"
        drain = asyncio.ensure_future(relay.drain())
        await asyncio.sleep(0.2)
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 503 and "draining" in await resp.text()
        async with session.get(base + "/metrics") as resp:
            assert "mproxy_edge_draining 1.0" in await resp.text()
        late = Device(tunnel_url(relay), token(["app.test"]))
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await late.connect()
        await late.close()
        writer.write(b"b")
        assert await asyncio.wait_for(reader.read(10), 5) == b"A:b"
        writer.close()
        await asyncio.wait_for(drain, 5)  # ends once the last client left, not after drainSeconds
