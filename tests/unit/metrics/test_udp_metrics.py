"""The UDP metrics of both roles: names, labels and the fixed set of drop reasons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mproxy.metrics import udp as udp_metrics
from mproxy.metrics.udp import DROP_REASONS, UdpMetrics

PKG = Path(udp_metrics.__file__).resolve().parents[1]
DOCS = PKG.parents[1] / "docs" / "metrics.md"


@pytest.mark.parametrize(("role", "key"), [("edge", "port"), ("sidecar", "route")])
def test_names_and_labels_are_pinned(role: str, key: str) -> None:
    reg = CollectorRegistry()
    m = UdpMetrics(reg, role, key)
    m.start("53")
    m.relayed("53", "in", 40)
    m.drop("oversize")
    m.client_count("53", 1)
    samples = {(s.name, tuple(sorted(s.labels))) for fam in reg.collect() for s in fam.samples
               if not s.name.endswith("_created")}
    p = f"mproxy_{role}_udp_"
    assert samples == {
        (p + "datagrams_total", ("direction", key)),
        (p + "bytes_total", ("direction", key)),
        (p + "clients", (key,)),
        (p + "dropped_total", ("reason",)),
    }
    assert reg.get_sample_value(p + "datagrams_total", {key: "53", "direction": "out"}) == 0  # started at 0
    assert reg.get_sample_value(p + "bytes_total", {key: "53", "direction": "in"}) == 40
    for reason in DROP_REASONS:  # every reason exists from the start
        assert reg.get_sample_value(p + "dropped_total", {"reason": reason}) is not None


def test_every_drop_reason_the_code_gives_is_in_the_fixed_set_and_documented() -> None:
    code = "".join((PKG / f).read_text() for f in ("edge/udp.py", "sidecar/udp_backend.py"))
    given = set(re.findall(r'drop\("([a-z_]+)"\)', code))
    given |= set(re.findall(r'reason = "([a-z_]+)"', code)) | set(re.findall(r'"([a-z_]+)" if ', code))
    given |= set(re.findall(r'else "([a-z_]+)"', code))
    given |= set(re.findall(r'return "([a-z_]+)"', (PKG / "tunnel/datagram.py").read_text()))
    assert {"oversize", "queue_full", "rate_limited", "backend_slow", "no_tunnel"} <= given  # the scan works
    assert given <= set(DROP_REASONS), given - set(DROP_REASONS)
    docs = DOCS.read_text()
    assert [r for r in DROP_REASONS if f"`{r}`" not in docs] == []
