"""The forwarding metrics: names, labels, every result series at 0 from the start and documented."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from mproxy.metrics import peers as peer_metrics
from mproxy.metrics.peers import IN_RESULTS, OUT_RESULTS, PeerMetrics

DOCS = Path(peer_metrics.__file__).resolve().parents[3] / "docs" / "metrics.md"


def test_names_labels_and_zero_series() -> None:
    reg = CollectorRegistry()
    m = PeerMetrics(reg)
    m.forwarded_out("ok")
    m.forwarded_in("replay")
    samples = {(s.name, tuple(sorted(s.labels))) for fam in reg.collect() for s in fam.samples
               if not s.name.endswith("_created")}
    assert samples == {
        ("mproxy_edge_forwards_out_total", ("result",)),
        ("mproxy_edge_forwards_in_total", ("result",)),
        ("mproxy_edge_forwards_active", ("direction",)),
        ("mproxy_edge_peers_known", ()),
        ("mproxy_edge_peers_reachable", ()),
    }
    assert reg.get_sample_value("mproxy_edge_forwards_out_total", {"result": "ok"}) == 1
    for result in OUT_RESULTS:
        assert reg.get_sample_value("mproxy_edge_forwards_out_total", {"result": result}) is not None
    for result in IN_RESULTS:
        assert reg.get_sample_value("mproxy_edge_forwards_in_total", {"result": result}) is not None


def test_every_result_is_documented() -> None:
    text = DOCS.read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
            if line.startswith("| `mproxy_edge_fo")}
    for result in OUT_RESULTS:
        assert f"`{result}`" in rows["mproxy_edge_forwards_out_total"], result
    for result in IN_RESULTS:
        assert f"`{result}`" in rows["mproxy_edge_forwards_in_total"], result
