"""Helpers for checking dashboards and alerts against a real Prometheus.

Three jobs, no fixtures here (those live in conftest.py):
- read the shipped dashboards and rule files and pull out every PromQL expression, with Grafana's
  variables replaced by what a real Prometheus accepts;
- name the metrics an expression refers to, and the metric names a /metrics scrape declares;
- a tiny client for Prometheus' HTTP API (stdlib only).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "mproxy"
DASHBOARD_DIR = CHART / "dashboards"
ALERT_DIR = CHART / "alerts"
DASHBOARD_SOURCE = DASHBOARD_DIR / "generate.py"
RULE_TESTS = Path(__file__).with_name("rules")  # <alert file stem>-test.yaml: promtool unit tests
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"

# What a Grafana variable becomes when a query runs outside Grafana.
RATE_INTERVAL = "1m"
_BUILTINS = {
    "__rate_interval": RATE_INTERVAL,
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "interval": "15s",
}


@dataclass(frozen=True)
class Target:
    """One panel query of one dashboard."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}:{self.panel}:{self.ref_id}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def alert_files() -> list[Path]:
    return sorted(ALERT_DIR.glob("*.yaml"))


def dashboard_source() -> ModuleType:
    """charts/mproxy/dashboards/generate.py: a script next to the chart, not a package, so loaded by path."""
    name = "mproxy_chart_dashboards"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DASHBOARD_SOURCE)
        assert spec is not None and spec.loader is not None, DASHBOARD_SOURCE
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def rule_test_file(alert_file: Path) -> Path:
    """The promtool unit tests of one alert file."""
    return RULE_TESTS / f"{alert_file.stem}-test.yaml"


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def _plain_value(variable: dict[str, Any]) -> str:
    """The value a non-regex use of a variable gets: its current (default) value."""
    current = variable.get("current", {}).get("value")
    if isinstance(current, list):
        current = current[0] if current else None
    if current in (None, "", "$__all"):
        raise ValueError(f"variable {variable['name']!r} needs a default value for use outside a matcher")
    return str(current)


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_REGEX_MATCHER = re.compile(r'(=~|!~)\s*"([^"]*)"')


def substitute(expr: str, dashboard: dict[str, Any]) -> str:
    """Replace Grafana variables so that Prometheus can run `expr`.

    Inside a regex matcher (`=~"$tunnel"`) a template variable becomes `.*` (All); elsewhere it takes its
    default value; Grafana's built-ins take fixed values ($__rate_interval -> 1m).
    """
    variables = _variables(dashboard)

    def in_matcher(match: re.Match[str]) -> str:
        def repl(var: re.Match[str]) -> str:
            name = var.group(1) or var.group(2) or var.group(3)
            if name in _BUILTINS:
                return _BUILTINS[name]
            return ".*"

        return f'{match.group(1)}"{_VAR.sub(repl, match.group(2))}"'

    expr = _REGEX_MATCHER.sub(in_matcher, expr)

    def elsewhere(var: re.Match[str]) -> str:
        name = var.group(1) or var.group(2) or var.group(3)
        if name in _BUILTINS:
            return _BUILTINS[name]
        if name == "datasource":
            return ""
        if name not in variables:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        return _plain_value(variables[name])

    return _VAR.sub(elsewhere, expr)


def dashboard_targets() -> list[Target]:
    targets: list[Target] = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    targets.append(Target(
                        dashboard=dashboard["uid"], panel=panel.get("title", "?"),
                        ref_id=target.get("refId", "?"), expr=substitute(expr, dashboard),
                    ))
        for variable in _variables(dashboard).values():
            query = variable.get("query")
            if variable.get("type") == "query" and isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and isinstance(query, str):
                inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
                if inner:  # label_values(<selector>, label) is Grafana's; the selector is PromQL
                    targets.append(Target(
                        dashboard=dashboard["uid"], panel=f"variable {variable['name']}", ref_id="query",
                        expr=substitute(inner.group(1), dashboard),
                    ))
    return targets


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in alert_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            rules.extend(group["rules"])
    return rules


# --- metric names ---------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)(?![\w:])")


def metric_names(expr: str, prefix: str = "mproxy_") -> set[str]:
    """The metric names `expr` selects (only those starting with `prefix`)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _GROUPING.sub("", text)
    names = {m.group(1) for m in _IDENT.finditer(text)}
    return {n for n in names if n.startswith(prefix) and n not in _PROMQL_KEYWORDS}


def exposed_names(exposition: str) -> set[str]:
    """Every name a query may use for the families declared in a text-format scrape.

    A family declared with no samples yet (a labelled counter nobody has touched) still counts: its
    HELP/TYPE lines prove the process defines it.
    """
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.add(name)
            names.update(base + s for s in suffixes.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


# --- Prometheus HTTP API --------------------------------------------------------------------------

class PrometheusAPI:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error in JSON
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=2) as resp:
                status: int = resp.status
                return status == 200
        except OSError:
            return False


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
