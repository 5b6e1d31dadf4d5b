"""The shipped alert rules: promtool accepts them, their unit tests pass, and those tests pin each `for`.

Each alert file charts/mproxy/alerts/<role>.yaml has its promtool unit tests in rules/<role>-test.yaml, and
aggregates by the labels the dashboards filter that role by (generate.py's SCOPES).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.prometheus.harness import (
    ALERT_DIR,
    RULE_TESTS,
    RUNBOOKS,
    alert_files,
    alert_rules,
    dashboard_source,
    rule_test_file,
)

pytestmark = pytest.mark.prometheus

ALERT_FILES = alert_files()


def _rules_of(path: Path) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def _promtool(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_rules(promtool: str) -> None:
    files = alert_files()
    assert files, f"no rule files in {ALERT_DIR}"
    result = _promtool(promtool, "check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alerts", ALERT_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, alerts: Path) -> None:
    result = _promtool(promtool, "test", "rules", str(rule_test_file(alerts)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_file_has_its_own_unit_test_file() -> None:
    """One promtool file per alert file, loading that file alone, and no test file without its alerts."""
    assert {p.name for p in RULE_TESTS.glob("*.yaml")} == {rule_test_file(p).name for p in ALERT_FILES}
    for alerts in ALERT_FILES:
        spec = rule_test_file(alerts)
        loaded = [(spec.parent / f).resolve() for f in yaml.safe_load(spec.read_text())["rule_files"]]
        assert loaded == [alerts.resolve()], spec.name


def test_alert_conventions() -> None:
    anchors = {
        _github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")
    }
    rules = alert_rules()
    assert rules
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Mproxy(?:[A-Z][a-z0-9]*)+", name), f"{name}: CamelCase with the Mproxy prefix"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes: dict[str, str] = rule["annotations"]
        assert "{{" not in notes["summary"], f"{name}: summary must be static (it groups notifications)"
        assert "{{" in notes["description"], f"{name}: description must say which instance, with templates"
        url = notes["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/runbooks.md"), f"{name}: runbook_url {url!r} is not docs/runbooks.md#..."
        assert anchor == name.lower() and anchor in anchors, f"{name}: no '## {name}' section in {RUNBOOKS}"
        assert "for" in rule, f"{name}: every alert waits (`for`) before firing"


def _boundary_cases(spec: Path) -> dict[str, list[tuple[str, bool]]]:
    """alert -> [(eval_time, expects an alert)] from one unit test file."""
    cases: dict[str, list[tuple[str, bool]]] = {}
    for test in yaml.safe_load(spec.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            cases.setdefault(check["alertname"], []).append((check["eval_time"], bool(check["exp_alerts"])))
    return cases


@pytest.mark.parametrize("alerts", ALERT_FILES, ids=lambda p: p.name)
def test_every_alert_has_a_boundary_test(alerts: Path) -> None:
    spec = rule_test_file(alerts)
    cases = _boundary_cases(spec)
    names = {r["alert"] for r in _rules_of(alerts)}
    assert set(cases) <= names, f"{spec.name} tests alerts of another file: {sorted(set(cases) - names)}"
    for name in names:
        assert {fires for _, fires in cases.get(name, [])} == {True, False}, (
            f"{name}: {spec.name} needs a check where it has not fired yet and one where it fires"
        )


def _with_every_for_shifted(alerts: Path, out: Path, delta_minutes: int) -> None:
    """Copy an alert file to `out`, with each alert's `for` moved by delta_minutes."""
    doc: dict[str, Any] = yaml.safe_load(alerts.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            minutes = re.fullmatch(r"(\d+)m", rule["for"])
            assert minutes, f"{rule['alert']}: write `for` in whole minutes"
            rule["for"] = f"{int(minutes.group(1)) + delta_minutes}m"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize("delta", [-1, +1])
@pytest.mark.parametrize("alerts", ALERT_FILES, ids=lambda p: p.name)
def test_unit_tests_catch_a_moved_for(promtool: str, tmp_path: Path, alerts: Path, delta: int) -> None:
    """The `for` boundaries really are pinned: one minute earlier or later and each alert's test fails."""
    shifted = tmp_path / alerts.name
    _with_every_for_shifted(alerts, shifted, delta)
    spec_file = rule_test_file(alerts)
    spec = yaml.safe_load(spec_file.read_text())
    spec["rule_files"] = [str(shifted)]
    (tmp_path / spec_file.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    result = _promtool(promtool, "test", "rules", spec_file.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    for alert in {r["alert"] for r in _rules_of(alerts)}:
        assert f"alertname: {alert}," in result.stdout + result.stderr, (
            f"moving {alert}'s `for` by {delta}m went unnoticed by {spec_file.name}"
        )


_BY = re.compile(r"\bby\s*\(([^)]*)\)")


@pytest.mark.parametrize("alerts", ALERT_FILES, ids=lambda p: p.name)
def test_alerts_aggregate_by_the_dashboards_scope(alerts: Path) -> None:
    """Each aggregation of an alert keeps a leading part of its role's scope (namespace, then tunnel, then
    pod for the sidecar), the labels the dashboards filter by: an alert names its instance the way the
    dashboards find it, and never a pod without its namespace."""
    scope = dashboard_source().SCOPES[alerts.stem].labels
    for rule in _rules_of(alerts):
        groupings = _BY.findall(rule["expr"])
        assert groupings, f"{rule['alert']}: aggregate `by` the labels that name an instance"
        for grouping in groupings:
            labels = [label.strip() for label in grouping.split(",")]
            kept = {label for label in labels if label in scope}
            assert kept and kept == set(scope[: len(kept)]), (
                f"{rule['alert']}: by ({grouping}) keeps {sorted(kept)} of {scope}; keep a leading part of it"
            )
