"""values.yaml and values.schema.json agree, every value is documented, and the observability keys exist.

helm itself validates values against the schema (tests/k8s/test_chart.py renders and installs the chart);
this test needs no helm: it walks both files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[3] / "charts" / "mproxy"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def _check(value: Any, schema: dict[str, Any], path: str, seen: list[str]) -> None:
    types = schema.get("type")
    if types:
        allowed = tuple(TYPES[t] for t in ([types] if isinstance(types, str) else types))
        assert isinstance(value, allowed), f"{path}: {value!r} is not {types}"
        if isinstance(value, bool):
            assert "boolean" in ([types] if isinstance(types, str) else types), f"{path}: bool"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in schema["properties"]:
                seen.append(sub)
                _check(item, schema["properties"][key], sub, seen)
            else:
                assert schema.get("additionalProperties", True) is not False, f"{sub}: not in the schema"


def test_defaults_satisfy_the_schema_and_every_key_is_known() -> None:
    seen: list[str] = []
    _check(VALUES, SCHEMA, "", seen)
    assert "operator.replicas" in seen and "edge.config" in seen


def _objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if "properties" in schema:
        out.append((path, schema))
        for key, sub in schema["properties"].items():
            out += _objects(sub, f"{path}.{key}" if path else key)
    return out


def test_schema_objects_reject_unknown_keys() -> None:
    for path, obj in _objects(SCHEMA):
        assert obj.get("additionalProperties") is False, f"{path or '(root)'} allows unknown keys"


def test_every_value_is_documented_above_its_key() -> None:
    """A key is documented by a comment right above it, or by one above an enclosing key (resources:,
    edge.config: document what they hold). Plain sections (image:, operator:) need none."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$")
    undocumented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        documented = (lines[i - 1].strip().startswith("#") if i else False) or any(d for _, d in ancestors)
        nxt = next((ln for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("#")), "")
        is_section = not rest and len(nxt) - len(nxt.lstrip()) > indent and not nxt.strip().startswith("-")
        ancestors.append((indent, documented))
        if not is_section and not documented:
            undocumented.append(f"line {i + 1}: {key}")
    assert not undocumented, "values without a comment above them: " + ", ".join(undocumented)


@pytest.mark.parametrize(
    "path",
    [
        "grafana.dashboards.enabled",
        "prometheusRule.enabled",
        "prometheusRule.runbookUrl",
        "prometheusRule.labels",
        "grafana.dashboards.annotations",
    ],
)
def test_observability_keys_are_there_and_off(path: str) -> None:
    node: Any = VALUES
    schema: Any = SCHEMA
    for part in path.split("."):
        node = node[part]
        schema = schema["properties"][part]
    assert node in (False, "", {})


def test_ci_values_files_are_known_keys() -> None:
    files = sorted((CHART / "ci").glob("*-values.yaml"))
    assert len(files) >= 2
    for f in files:
        data = yaml.safe_load(f.read_text()) or {}
        _check(data, SCHEMA, "", [])


def test_webhook_path_matches_the_handler_id() -> None:
    from mproxy_operator import names

    text = (CHART / "templates" / "webhook-mutatingwebhook.yaml").read_text()
    assert f"path: {names.WEBHOOK_PATH}\n" in text
