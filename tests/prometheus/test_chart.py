"""The chart ships the dashboards as ConfigMaps for Grafana's sidecar and the rules as PrometheusRules.

With helm (built by tests/k8s/controlplane/build.sh into the cache, or on PATH) the chart is rendered for
real; without it the templates are checked as text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.prometheus.harness import CHART, alert_files, dashboard_files

pytestmark = pytest.mark.prometheus

TEMPLATES = CHART / "templates"
RUNBOOKS_URL = "https://runbooks.example.test/mproxy/runbooks.md"


def _helm() -> str | None:
    cache = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy"))
    built = cache / "k8s" / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return shutil.which("helm")


HELM = _helm() if (CHART / "Chart.yaml").is_file() else None


def _render(*sets: str, values: Path | None = None) -> list[dict[str, Any]]:
    assert HELM is not None
    argv = [HELM, "template", "obs", str(CHART), "--namespace", "obs"]
    if values is not None:
        argv += ["--values", str(values)]
    for s in sets:
        argv += ["--set-string" if "labels." in s else "--set", s]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.skipif(HELM is None, reason="no helm or no Chart.yaml: checked as text instead")
def test_helm_renders_dashboards_and_rules() -> None:
    docs = _render(
        "grafana.dashboards.enabled=true", "prometheusRule.enabled=true",
        f"prometheusRule.runbookUrl={RUNBOOKS_URL}", "prometheusRule.labels.release=kps",
    )
    maps = [d for d in docs if d["kind"] == "ConfigMap"
            and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    shipped = {}
    for cm in maps:
        assert cm["metadata"]["namespace"] == "obs"
        shipped.update(cm["data"])
    assert shipped == {p.name: p.read_text().rstrip("\n") for p in dashboard_files()}
    for text in shipped.values():
        json.loads(text)

    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rules and all(r["metadata"]["labels"]["release"] == "kps" for r in rules)
    got = [g for r in rules for g in r["spec"]["groups"]]
    want = [g for p in alert_files() for g in yaml.safe_load(p.read_text())["groups"]]
    for group in want:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook_url"].partition("#")[2]
            rule["annotations"]["runbook_url"] = f"{RUNBOOKS_URL}#{anchor}"
    assert got == want  # the $labels templates came through unrendered


@pytest.mark.skipif(HELM is None, reason="no helm or no Chart.yaml: checked as text instead")
def test_dashboard_and_rule_names_clash_with_nothing_else_in_the_chart() -> None:
    """With every optional part on (ci/full-values.yaml), no two objects share a kind and a name."""
    docs = _render(values=CHART / "ci" / "full-values.yaml")
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert sum(1 for kind, _ in keys if kind == "PrometheusRule") == len(alert_files())
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


@pytest.mark.skipif(HELM is None, reason="no helm or no Chart.yaml: checked as text instead")
def test_helm_renders_nothing_when_disabled() -> None:
    docs = _render("grafana.dashboards.enabled=false", "prometheusRule.enabled=false")
    assert not [d for d in docs if d["kind"] == "PrometheusRule"]
    assert not [d for d in docs if d.get("metadata", {}).get("labels", {}).get("grafana_dashboard")]


def test_templates_as_text() -> None:
    dashboards = (TEMPLATES / "grafana-dashboards.yaml").read_text()
    assert "((.Values.grafana).dashboards).enabled" in dashboards
    assert '.Files.Glob "dashboards/*.json"' in dashboards
    assert 'grafana_dashboard: "1"' in dashboards
    rules = (TEMPLATES / "prometheusrule.yaml").read_text()
    assert "(.Values.prometheusRule).enabled" in rules
    assert '.Files.Glob "alerts/*.yaml"' in rules
    assert "kind: PrometheusRule" in rules
    assert dashboard_files() and alert_files()
    for path in alert_files():  # each file becomes a PrometheusRule spec as it is
        assert set(yaml.safe_load(path.read_text())) == {"groups"}, path.name


def test_podmonitor_adds_the_tunnel_label_the_dashboards_filter_on() -> None:
    """Dashboards and sidecar alerts group by `tunnel`; the chart's PodMonitor is what sets it."""
    if HELM is None:
        assert "targetLabel: tunnel" in (TEMPLATES / "sidecar-podmonitor.yaml").read_text()
        return
    docs = _render("podMonitor.enabled=true")
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    endpoints = [e for m in monitors for e in m["spec"]["podMetricsEndpoints"]]
    relabels = [r for e in endpoints for r in e.get("relabelings", [])]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_mproxy_dev_tunnel"], "targetLabel": "tunnel"} in [
        {k: r[k] for k in ("sourceLabels", "targetLabel") if k in r} for r in relabels
    ]


def test_edge_podmonitor_scrapes_the_edge_pods_metrics_port() -> None:
    """With the edge and the monitors on, a PodMonitor selects exactly the edge pods and scrapes the
    container port their /metrics is on; without the edge (or the monitors) there is none."""
    template = (TEMPLATES / "edge-podmonitor.yaml").read_text()
    if HELM is None:
        assert "and .Values.edge.enabled .Values.podMonitor.enabled" in template
        assert "port: http-metrics" in template
        return
    docs = _render("edge.enabled=true", "edge.secretName=s", "podMonitor.enabled=true",
                   "podMonitor.interval=15s", "podMonitor.labels.release=kps")
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"obs-mproxy-sidecars", "obs-mproxy-edge"}
    mon = monitors["obs-mproxy-edge"]
    assert mon["metadata"]["namespace"] == "obs" and mon["metadata"]["labels"]["release"] == "kps"
    assert mon["spec"]["namespaceSelector"] == {"matchNames": ["obs"]}
    (endpoint,) = mon["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "http-metrics", "path": "/metrics", "interval": "15s"}
    (edge,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "obs-mproxy-edge"]
    pod = edge["spec"]["template"]
    selector = mon["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    operator_pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs
                     if d["kind"] == "Deployment" and d is not edge]
    assert operator_pods and not any(selector.items() <= labels.items() for labels in operator_pods)
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports["http-metrics"] == 9090  # edge.config.http.listen
    for sets in (("edge.enabled=true", "edge.secretName=s"), ("podMonitor.enabled=true",)):
        assert not [d for d in _render(*sets)
                    if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "obs-mproxy-edge"], sets
