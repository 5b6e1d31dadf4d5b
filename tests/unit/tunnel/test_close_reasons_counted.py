"""Every reason run_tunnel can end with is a known label value in both roles' metrics (an unknown one would
fold into "other" and hide overflows and internal errors from the dashboards)."""

from __future__ import annotations

import re
from pathlib import Path

from mproxy.edge import tunnels
from mproxy.metrics.edge import TUNNEL_REJECT_REASONS
from mproxy.metrics.sidecar import TUNNEL_DOWN_REASONS
from mproxy.tunnel import ws


def run_tunnel_reasons() -> set[str]:
    source = Path(ws.__file__).read_text()
    return set(re.findall(r'TunnelClose\(\s*"(\w+)"', source))


def test_the_scan_finds_the_reasons() -> None:
    assert {"overflow", "internal_error", "dead_peer", "protocol_error", "shutdown"} <= run_tunnel_reasons()


def test_every_tunnel_end_is_a_sidecar_reconnect_reason() -> None:
    assert run_tunnel_reasons() <= TUNNEL_DOWN_REASONS, run_tunnel_reasons() - TUNNEL_DOWN_REASONS


def test_the_edge_counts_its_faulty_closes_under_known_reasons() -> None:
    counted = set(tunnels._COUNTED_CLOSES)
    assert counted <= set(TUNNEL_REJECT_REASONS) and counted <= run_tunnel_reasons()
