"""Real `mproxy edge` / `mproxy sidecar` processes for the hostile-peer tests, and what we measure on them.

Every figure comes from the kernel: RSS from /proc/PID/status, open fds from /proc/PID/fd, TCP states of a
port from /proc/net/tcp{,6}. Logs (stderr) are collected as they come so a pipe never fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
SECRET = b"hostile-e2e-secret-0123456789"

CLOSE_WAIT = "08"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "sidecar") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_states(local_port: int) -> dict[str, int]:
    """Count the sockets whose local port is `local_port`, by kernel TCP state (hex, e.g. "08")."""
    counts: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    counts[fields[3]] = counts.get(fields[3], 0) + 1
    return counts


class Proc:
    """A child `python -m mproxy ...`; `logs` holds its stderr lines so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.logs: list[str] = []
        self._new = asyncio.Event()
        assert proc.stderr is not None
        self._reader = asyncio.ensure_future(self._read(proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.logs.append(line.decode(errors="replace"))
            self._new.set()

    @property
    def text(self) -> str:
        return "".join(self.logs)

    async def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.logs:
                    if needle in line:
                        return line
                self._new.clear()
                await self._new.wait()

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def fds(self) -> int:
        return open_fds(self.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reader, 2)


async def _exec(role: str, config: dict[str, Any], tmp: Path) -> asyncio.subprocess.Process:
    path = tmp / f"{role}.yaml"
    path.write_text(yaml.safe_dump(config))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", role, "--config", str(path), env=child_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def spawn(role: str, config: dict[str, Any], tmp: Path) -> Proc:
    return Proc(await _exec(role, config, tmp))


class EdgeProc(Proc):
    tunnel_port = 0
    http_port = 0
    ports: dict[str, int]


async def start_edge(tmp: Path, **overrides: Any) -> EdgeProc:
    """`mproxy edge` with a TLS, an HTTP and a TCP listener; ports from its ready line."""
    secret = tmp / "secret"
    secret.write_bytes(SECRET + b"\n")
    cfg: dict[str, Any] = {
        "auth": {"secretFile": str(secret)},
        "listeners": [
            {"kind": "tls", "listen": "127.0.0.1:0"},
            {"kind": "http", "listen": "127.0.0.1:0"},
            {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": 7022},
        ],
        "tunnel": {"listen": "127.0.0.1:0", "path": "/"},
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3, "authTimeoutSeconds": 10},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
    }
    for key, value in overrides.items():
        merge = isinstance(value, dict) and isinstance(cfg.get(key), dict)
        cfg[key] = {**cfg[key], **value} if merge else value
    edge = EdgeProc(await _exec("edge", cfg, tmp))
    assert edge.proc.stdout is not None
    line = (await asyncio.wait_for(edge.proc.stdout.readline(), 30)).decode()
    assert line.startswith("mproxy edge ready"), (line, edge.text)
    # "mproxy edge ready: tunnel=P http=P tls=P, http=P, tcp=P": the first http is the observe port
    pairs = [part.split("=") for part in line.replace(",", " ").split()[3:]]
    (_, tunnel), (_, http), *listeners = pairs
    edge.tunnel_port, edge.http_port = int(tunnel), int(http)
    edge.ports = {kind: int(port) for kind, port in listeners}
    return edge
