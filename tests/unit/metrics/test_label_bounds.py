"""Label values that come from the network are bounded: thousands of distinct codes, errnos, reasons,
names and clients leave a fixed number of series in both roles."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mproxy.metrics.edge import EdgeMetrics
from mproxy.metrics.sidecar import SidecarMetrics, stream_error_reason


def series(registry: CollectorRegistry, family: str) -> set[tuple[tuple[str, str], ...]]:
    return {tuple(sorted(s.labels.items()))
            for m in registry.collect() if m.name == family for s in m.samples}


def test_stream_error_reasons_fold_unknown_codes() -> None:
    assert stream_error_reason("client_econnreset") == "client_econnreset"
    assert stream_error_reason("client_e_no_conn") == "client_e_no_conn"
    assert stream_error_reason("client_error") == "client_error"
    assert stream_error_reason("client_e_made_up_by_the_relay") == "client_other"
    assert stream_error_reason("backend_econnrefused") == "backend_econnrefused"
    assert stream_error_reason("backend_eweird") == "backend_other"
    assert stream_error_reason("buffer_overflow") == "buffer_overflow"
    assert stream_error_reason("something_new") == "other"


def test_sidecar_series_stay_bounded_under_many_distinct_values() -> None:
    m = SidecarMetrics(tier="client", max_clients=10)
    for i in range(2000):
        meter = m.stream_opened("web", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        meter.error(f"client_e_{i}")
        meter.error(f"backend_e{i}")
        meter.close()
        m.refuse(f"e_code_{i}")
        m.tunnel_down("edge.test:443", "0", f"weird_{i}")
    reg = m.registry
    errors = series(reg, "mproxy_sidecar_stream_errors")
    assert {dict(labels)["reason"] for labels in errors} == {"client_other", "backend_other"}
    assert len({dict(labels)["client"] for labels in errors}) <= 11  # 10 live clients + "other"
    assert {dict(labels)["reason"] for labels in series(reg, "mproxy_sidecar_streams_refused")} == {
        "no_route", "refused_backend", "limit", "draining", "other"}
    assert {dict(labels)["reason"] for labels in series(reg, "mproxy_sidecar_tunnel_reconnects")} == {"other"}
    total = sum(1 for fam in reg.collect() for _ in fam.samples)
    assert total < 300, total


def test_edge_series_stay_bounded_under_many_distinct_values() -> None:
    m = EdgeMetrics()
    m.set_tunnel_names({"shop.test": 1})
    for i in range(2000):
        # Names clients send (SNI/Host) that no grant declares fold into "(other)".
        m.client_done("https", f"n{i}.attacker.test", "ok", 1, 1, 0.01)
        m.client_rejected("https", f"made_up_{i}")
        m.client_rejected(f"proto{i}", "no_tunnel")
    m.client_done("https", "shop.test", "ok", 1, 1, 0.01)
    reg = m.registry
    names = {dict(labels)["name"] for labels in series(reg, "mproxy_edge_client_connections")}
    assert names == {"shop.test", "(other)", ""}, names
    reasons = {dict(labels)["reason"] for labels in series(reg, "mproxy_edge_rejects")}
    assert "other" in reasons and not any(r.startswith("made_up") for r in reasons)
    protocols = {dict(labels)["protocol"] for labels in series(reg, "mproxy_edge_client_connections")}
    assert protocols <= {"https", "http", "tcp", "other"}
    total = sum(1 for fam in reg.collect() for _ in fam.samples)
    assert total < 300, total


def test_every_reason_the_edge_code_gives_has_its_own_value() -> None:
    """A reason added to the edge's code but not to the metrics' fixed sets would silently count as
    "other": scan the code for the literals it passes."""
    import re
    from pathlib import Path

    from mproxy.metrics import edge as edge_metrics

    src = Path(edge_metrics.__file__).resolve().parents[1] / "edge"
    code = {p.name: p.read_text() for p in src.glob("*.py")}
    rejects = set(re.findall(r'Refused\(\s*"(\w+)"', "".join(code.values())))
    rejects |= set(re.findall(r'return "(\w+)"', code["limits.py"]))
    rejects |= set(re.findall(r'rejected\([^)]*?"(\w+)"\)', "".join(code.values())))
    assert {"no_tunnel", "rate_limited", "sniff_timeout", "overloaded"} <= rejects  # the scan finds them
    assert rejects <= set(edge_metrics.REJECT_REASONS), rejects - set(edge_metrics.REJECT_REASONS)
    tokens = set(re.findall(r'TokenError\([^\n]*?,\s*"(\w+)"\)', "".join(code.values())))
    tokens |= set(re.findall(r'tunnel_rejects\.labels\("(\w+)"\)', "".join(code.values())))
    tokens |= set(re.findall(r'self\.count\("(\w+)"\)', code["expiry.py"]))
    tokens |= set(re.findall(r'return "(\w+)"', code["control.py"]))
    assert {"bad_signature", "expired", "no_token"} <= tokens
    assert tokens <= set(edge_metrics.TUNNEL_REJECT_REASONS), tokens - set(edge_metrics.TUNNEL_REJECT_REASONS)


def test_every_fixed_stream_error_reason_of_the_sidecar_has_its_own_value() -> None:
    import re
    from pathlib import Path

    from mproxy.metrics import sidecar as sidecar_metrics

    src = Path(sidecar_metrics.__file__).resolve().parents[1] / "sidecar" / "backend.py"
    reasons = set(re.findall(r'meter\.error\("(\w+)"\)', src.read_text()))
    assert {"idle", "tunnel_closed"} <= reasons
    assert reasons <= sidecar_metrics.STREAM_ERROR_REASONS, reasons - sidecar_metrics.STREAM_ERROR_REASONS


def test_buffer_cut_limits_match_the_rule_and_unknown_ones_fold() -> None:
    from mproxy.buffers import CUT_LIMITS
    from mproxy.metrics.edge import BUFFER_LIMITS

    assert set(BUFFER_LIMITS) == set(CUT_LIMITS)  # metrics may not import buffers (same layer)
    m = EdgeMetrics()
    for i in range(100):
        m.buffer_cut(f"made_up_{i}")
    m.buffer_cut("soft")
    cuts = {dict(labels)["limit"]: None for labels in series(m.registry, "mproxy_edge_buffer_cuts")}
    assert set(cuts) == {"hard", "soft", "tunnel", "other"}
