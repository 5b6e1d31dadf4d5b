"""Every listening socket of the edge gets limits.listenBacklog (the soak's resets before the first byte
came from asyncio's default backlog of 100 overflowing when hundreds of clients connected at once)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from .harness import Parts

pytestmark = pytest.mark.e2e


def listen_backlog(port: int) -> int:
    """The accept-queue size of the socket listening on `port`: `ss` shows it as Send-Q."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out, f"nothing listens on port {port}"
    return int(out[2])


@pytest.mark.parametrize("backlog", [None, 321])
async def test_every_listener_gets_the_backlog(parts: Parts, backlog: int | None) -> None:
    limits: dict[str, Any] = {} if backlog is None else {"limits": {"listenBacklog": backlog}}
    edge = await parts.edge(**limits)
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())  # the kernel's cap on any backlog
    want = min(backlog or 4096, somaxconn)
    ports = [item.port for item in edge.listeners] + [edge.tunnel_port, edge.http_port]
    assert {port: listen_backlog(port) for port in ports} == dict.fromkeys(ports, want)
