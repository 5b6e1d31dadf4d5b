"""The shipped alert rules: promtool accepts them, their unit tests pass, and those tests pin each `for`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.prometheus.harness import ALERT_DIR, RUNBOOKS, alert_files, alert_rules

pytestmark = pytest.mark.prometheus

RULES_TEST = Path(__file__).with_name("rules-test.yaml")


def _promtool(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_rules(promtool: str) -> None:
    files = alert_files()
    assert files, f"no rule files in {ALERT_DIR}"
    result = _promtool(promtool, "check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_test_loads_every_rule_file() -> None:
    loaded = {(RULES_TEST.parent / f).resolve() for f in yaml.safe_load(RULES_TEST.read_text())["rule_files"]}
    assert loaded == {p.resolve() for p in alert_files()}


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


def _boundary_cases() -> dict[str, list[tuple[str, bool]]]:
    """alert -> [(eval_time, expects an alert)] from the unit test file."""
    cases: dict[str, list[tuple[str, bool]]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            cases.setdefault(check["alertname"], []).append((check["eval_time"], bool(check["exp_alerts"])))
    return cases


def test_every_alert_has_a_boundary_test() -> None:
    cases = _boundary_cases()
    for name in (r["alert"] for r in alert_rules()):
        assert {fires for _, fires in cases.get(name, [])} == {True, False}, (
            f"{name}: rules-test.yaml needs a check where it has not fired yet and one where it fires"
        )


def _with_every_for_shifted(rule_dir: Path, delta_minutes: int) -> None:
    """Copy every rule file into rule_dir, with each alert's `for` moved by delta_minutes."""
    for path in alert_files():
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                minutes = re.fullmatch(r"(\d+)m", rule["for"])
                assert minutes, f"{rule['alert']}: write `for` in whole minutes"
                rule["for"] = f"{int(minutes.group(1)) + delta_minutes}m"
        (rule_dir / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize("delta", [-1, +1])
def test_unit_tests_catch_a_moved_for(promtool: str, tmp_path: Path, delta: int) -> None:
    """The `for` boundaries really are pinned: one minute earlier or later and each alert's test fails."""
    rules_dir = tmp_path / "alerts"
    rules_dir.mkdir()
    _with_every_for_shifted(rules_dir, delta)
    spec = yaml.safe_load(RULES_TEST.read_text())
    spec["rule_files"] = [str(rules_dir / Path(f).name) for f in spec["rule_files"]]
    (tmp_path / "rules-test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = _promtool(promtool, "test", "rules", "rules-test.yaml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    for alert in {r["alert"] for r in alert_rules()}:
        assert f"alertname: {alert}," in result.stdout + result.stderr, (
            f"moving {alert}'s `for` by {delta}m went unnoticed by rules-test.yaml"
        )
