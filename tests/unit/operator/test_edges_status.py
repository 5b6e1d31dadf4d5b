"""EdgesConnected: what the sidecars' /status says about their edges, summed up per Tunnel; and the probe
against real HTTP servers on loopback (an answer, a wrong answer, a refused port, a silent one)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.unit.operator.fixtures import SERVICES, tunnel

from mproxy_operator import sidecar_view
from mproxy_operator.model import parse_spec
from mproxy_operator.resolve import resolve_routes
from mproxy_operator.sidecar_view import SidecarView, probe, summarize
from mproxy_operator.status import ConnectorCounts, EdgeViews, PodCounts, build_status, edges_condition

NOW = "2026-11-25T09:00:00Z"


def doc(*pools: tuple[int, int]) -> dict[str, Any]:
    return {"edges": [{"edge": f"ws://e{i}/", "expectedEdges": want, "connectedEdges": have}
                      for i, (want, have) in enumerate(pools)]}


def test_summarize_sums_the_urls_and_caps_each_at_its_expected_count() -> None:
    assert summarize("p", doc((3, 2), (1, 1))) == SidecarView("p", 4, 3)
    assert summarize("p", doc((2, 3))) == SidecarView("p", 2, 2)  # a brief extra edge is not "more"
    assert summarize("p", {"edges": [{"expectedEdges": "3"}, 7]}) == SidecarView("p", 0, 0)
    assert summarize("p", {"role": "sidecar"}).error == (
        "its /status has no edges list (a sidecar older than the operator?)")
    assert summarize("p", [1]).error is not None


@pytest.mark.parametrize(("views", "ready", "want"), [
    ((), 0, (None, "NoReadyPods", "no ready pod carries the sidecar yet")),
    ((SidecarView("web-0", 3, 3), SidecarView("web-1", 3, 3)), 2,
     (True, "AllEdgesConnected", "2 sidecar(s) hold tunnels to all their edges (3 each)")),
    ((SidecarView("web-0", 3, 2), SidecarView("web-1", 3, 3)), 2,
     (False, "EdgesMissing", "2 of 3 edges on pod web-0")),
    ((SidecarView("web-0", 3, 2), SidecarView("web-1", error="no answer")), 2,
     (False, "EdgesMissing", "2 of 3 edges on pod web-0; sidecars not answering: pod web-1: no answer")),
    ((SidecarView("web-0", 2, 2), SidecarView("web-1", error="no answer")), 2,
     (None, "SidecarsUnreachable", "1 of 2 sidecars did not answer on their admin port (a NetworkPolicy "
      "must let the operator reach spec.metrics.port): pod web-1: no answer")),
    ((SidecarView("web-0", 1, 1), SidecarView("web-1", 2, 2)), 70,
     (True, "AllEdgesConnected", "2 sidecar(s) hold tunnels to all their edges (1-2 each) (checked 2 of 70 "
      "ready pods)")),
    (tuple(SidecarView(f"p{i}", 2, 1) for i in range(7)), 7,
     (False, "EdgesMissing", "; ".join(f"1 of 2 edges on pod p{i}" for i in range(5)) + "; 2 more")),
])
def test_the_condition(views: tuple[SidecarView, ...], ready: int, want: tuple[Any, str, str]) -> None:
    assert edges_condition(EdgeViews(views, ready)) == want


def _status(edges: EdgeViews | None, previous: list[dict[str, Any]] | None = None,
            **overrides: Any) -> dict[str, Any]:
    spec = parse_spec(tunnel(**overrides)["spec"])
    resolved, unresolved = resolve_routes(spec.routes, SERVICES, "prod")
    return build_status(generation=3, spec=spec, resolved=resolved, unresolved=unresolved,
                        pods=PodCounts(2, 2, 2), connector=ConnectorCounts(True, 2, 2, True), config_map="m",
                        config_hash="c", sidecar_hash="s", previous=previous or [], now=NOW, edges=edges)


def test_the_status_carries_the_condition_and_the_counts_but_ready_ignores_them() -> None:
    status = _status(EdgeViews((SidecarView("web-0", 3, 1), SidecarView("web-1", 3, 3),
                                SidecarView("web-2", error="x")), 3))
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["EdgesConnected"]["status"] == "False"
    assert conds["EdgesConnected"]["message"].startswith("1 of 3 edges on pod web-0")
    assert conds["Ready"]["status"] == "True"
    assert (status["sidecarsReporting"], status["sidecarsMissingEdges"], status["edgesExpected"],
            status["edgesConnected"]) == (2, 1, 3, 1)
    # Unknown keeps its transition time while it stays Unknown.
    unknown = _status(EdgeViews((), 0), previous=[{"type": "EdgesConnected", "status": "Unknown",
                                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    cond = next(c for c in unknown["conditions"] if c["type"] == "EdgesConnected")
    assert (cond["status"], cond["lastTransitionTime"]) == ("Unknown", "2026-01-01T00:00:00Z")
    # Connector mode: the connector pods are asked the same way.
    gw = _status(EdgeViews((SidecarView("mproxy-connector-shop-0", 2, 2),), 1), mode="Connector",
                 selector=None)
    conds = {c["type"]: c["status"] for c in gw["conditions"]}
    assert conds["EdgesConnected"] == "True" and conds["ConnectorAvailable"] == "True"
    assert gw["sidecarsReporting"] == 1 and gw["connectorReadyReplicas"] == 2
    # Asking is off: no condition, and the counts are removed (None in the merge patch).
    off = _status(None)
    assert "EdgesConnected" not in {c["type"] for c in off["conditions"]}
    assert off["edgesExpected"] is None and off["sidecarsReporting"] is None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        kind = self.server.kind  # type: ignore[attr-defined]
        if kind == "slow":
            time.sleep(sidecar_view.TIMEOUT + 1)
        body = {"ok": json.dumps(doc((2, 1))).encode(), "html": b"<html>", "slow": b"{}", "404": b"",
                "huge": b" " * (sidecar_view.MAX_BODY + 10)}[kind]
        self.send_response(404 if kind == "404" else 200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    ports, running = {}, []
    for kind in ("ok", "html", "huge", "slow", "404"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.kind = kind  # type: ignore[attr-defined]
        server.daemon_threads = True
        server.handle_error = lambda *_: None  # type: ignore[method-assign]  # a client that gave up
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        running.append(server)
        ports[kind] = server.server_address[1]
    yield ports
    for server in running:
        server.shutdown()
        server.server_close()


def test_probe_reads_each_pod_and_names_what_went_wrong(servers: dict[str, int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    monkeypatch.setattr(sidecar_view, "TIMEOUT", 0.5)
    # Each pod on its own port: probe() takes one port, so ask per pod.
    got = {kind: probe([(f"pod-{kind}", "127.0.0.1")], port)[0] for kind, port in
           [*servers.items(), ("refused", refused)]}
    assert got["ok"] == SidecarView("pod-ok", 2, 1)
    assert got["html"].error == "its /status is not JSON"
    assert got["huge"].error == f"its /status is over {sidecar_view.MAX_BODY} bytes"
    assert got["404"].error == "its admin port answered HTTP 404"
    assert str(got["refused"].error).startswith(f"no answer from 127.0.0.1:{refused}")
    assert got["slow"].error is not None and "timed out" in got["slow"].error


def test_probe_is_bounded_in_pods(servers: dict[str, int]) -> None:
    targets = [(f"pod-{i:03d}", "127.0.0.1") for i in range(sidecar_view.MAX_PODS + 20)]
    views = probe(targets, servers["ok"])
    assert len(views) == sidecar_view.MAX_PODS
    assert [v.pod for v in views] == [f"pod-{i:03d}" for i in range(sidecar_view.MAX_PODS)]
    assert all(v == SidecarView(v.pod, 2, 1) for v in views)


def test_probe_gives_up_after_its_budget(servers: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Blackholed sidecars cannot hold a reconcile: past BUDGET the rest is "not checked"."""
    monkeypatch.setattr(sidecar_view, "TIMEOUT", 0.4)  # the slow server answers after TIMEOUT + 1
    monkeypatch.setattr(sidecar_view, "BUDGET", 1.0)
    started = time.monotonic()
    views = probe([(f"pod-{i:02d}", "127.0.0.1") for i in range(40)], servers["slow"])
    took = time.monotonic() - started
    assert took < 1.0 + 0.4 + 0.5, took
    assert len(views) == 40 and all(v.error for v in views)
    unchecked = [v for v in views if str(v.error).startswith("not checked within 1 s")]
    assert 0 < len(unchecked) < 40 - sidecar_view.CONCURRENCY + 1
