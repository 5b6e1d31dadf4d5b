"""`mproxy sidecar` as a real process: endpoints, SIGTERM drain with 1001, JSON logs without secrets."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from tests.ports import free_port

from .conftest import (
    BackendFactory,
    RelayFactory,
    child_env,
    python_cmd,
    route,
    sidecar_yaml,
    tagged_echo,
    tcp_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

TOKEN = "tok-do-not-log-me"


async def test_cli_endpoints_sigterm_drain_and_logs(node_relay: RelayFactory, backends: BackendFactory,
                                                    tmp_path: Path) -> None:
    b = await backends(tagged_echo(b"e"))
    http_port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    async with node_relay({"service": "tcp", "serviceport": 1}, token=TOKEN) as relay:
        cfg = sidecar_yaml(relay, [route("echo", b.port)], http={"listen": f"127.0.0.1:{http_port}"},
                           logging={"format": "json", "level": "info"}, drainSeconds=10,
                           edge={"tokenFile": str(tmp_path / "token")})
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(cfg))
        check = subprocess.run([*python_cmd(), "sidecar", "--config", str(path), "--check"], env=child_env(),
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "OK" in check.stdout
        proc = await asyncio.create_subprocess_exec(
            *python_cmd(), "sidecar", "--config", str(path), env=child_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await relay.wait_tunnels(1, timeout=20)
            base = f"http://127.0.0.1:{http_port}"
            async with aiohttp.ClientSession() as s:
                async with asyncio.timeout(10):
                    while True:
                        try:
                            async with s.get(base + "/readyz") as r:
                                if r.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.05)
                async with s.get(base + "/healthz") as r:
                    assert r.status == 200
                async with s.get(base + "/status") as r:
                    status = json.loads(await r.text())
                assert status["tunnels"][0]["state"] == "connected" and status["routes"] == ["echo"]
                # A long-lived stream in flight.
                reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])
                writer.write(b"a")
                assert await asyncio.wait_for(reader.readexactly(3), 5) == b"e:a"
                async with s.get(base + "/metrics") as r:
                    text = await r.text()
                assert "mproxy_sidecar_tunnel_connected{" in text and '} 1.0' in text
                assert 'mproxy_sidecar_streams_active{client="127.0.0.1",route="echo"} 1.0' in text
                assert TOKEN not in text

                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):
                    while True:
                        async with s.get(base + "/readyz") as r:
                            if r.status == 503:
                                break
                        await asyncio.sleep(0.05)
            # New streams are refused so that the relay can use another replica...
            mark = relay.mark()
            assert await tcp_roundtrip(relay.ports[0], b"new") == b""
            err = await relay.wait_event(lambda e: e["event"] == "stream_error", start=mark)
            assert err["code"] == "E_SHUTTING_DOWN"
            # ...while the stream in flight finishes its work.
            writer.write(b"b")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
            mark = relay.mark()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            closed = await relay.wait_event(lambda e: e["event"] == "tunnel" and e["state"] == "closed",
                                            start=mark)
            assert closed["code"] == 1001
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert lines, "no log lines"
    assert any(line.get("tunnel") for line in lines)
    assert any(line.get("msg", "").startswith("shutting down") for line in lines)
    assert TOKEN not in logs and "Traceback" not in logs


async def test_cli_refuses_a_bad_config_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("edge: {urls: ['ws://127.0.0.1:1/']}\nroutes: [{name: a, backend: {host: h, port: 0}}]\n")
    proc = subprocess.run([*python_cmd(), "sidecar", "--config", str(path)], env=child_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "routes[0].backend.port: must be 1-65535" in proc.stderr
    assert "Traceback" not in proc.stderr
