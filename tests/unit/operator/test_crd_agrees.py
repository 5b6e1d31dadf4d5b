"""The Tunnel CRD declares every sidecar config field the Tunnel carries with the bounds, enum and default
of the sidecar schema (mproxy/config/schema.py), so kubectl refuses what the sidecar would refuse."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mproxy.config import schema
from mproxy.config.common import LISTENER_GROUP, MAX_LISTENER_GROUPS
from mproxy.config.sidecar import LimitsConfig
from mproxy_operator.model import SIDECAR_FIELDS

CRD = Path(__file__).resolve().parents[3] / "charts/mproxy/crds/mproxy.dev_tunnels.yaml"
BOUNDS = ("type", "minimum", "maximum", "enum", "format", "x-kubernetes-int-or-string")


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root["properties"]["spec"]  # type: ignore[no-any-return]


def prop(spec: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = spec
    for part in dotted.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return node


def disagreements(declared: dict[str, Any], spec: schema.Spec, default: Any) -> dict[str, Any]:
    want = spec.json_schema()
    out = {k: (declared.get(k), want.get(k)) for k in BOUNDS if declared.get(k) != want.get(k)}
    if "default" in declared and declared["default"] != spec.dump(default):
        out["default"] = (declared["default"], spec.dump(default))
    return out


def fields() -> list[tuple[str, schema.Spec, Any]]:
    out = []
    for dotted, (cls, attr) in SIDECAR_FIELDS.items():
        out.append((dotted, schema.spec_of(cls, attr), schema.default(cls, attr)))
    out += [(f"limits.{key}", spec, default) for _, key, spec, default in schema.specs(LimitsConfig)]
    return out


@pytest.mark.parametrize(("dotted", "spec", "default"), fields(), ids=[f[0] for f in fields()])
def test_crd_declares_the_sidecar_bounds(dotted: str, spec: schema.Spec, default: Any) -> None:
    assert disagreements(prop(spec_schema(), dotted), spec, default) == {}, "(CRD, sidecar schema)"


def test_crd_listener_groups_are_the_sidecar_names() -> None:
    """edge.listenerGroups is a list the sidecar's loader reads itself (mproxy.config.common), so it is no
    SIDECAR_FIELDS entry: its name pattern and count are checked here."""
    declared = prop(spec_schema(), "edge.listenerGroups")
    items = declared["items"]
    assert (declared["type"], declared["maxItems"], items["type"]) == ("array", MAX_LISTENER_GROUPS, "string")
    assert items["pattern"] == f"^{LISTENER_GROUP.pattern}$"
    longest = items["maxLength"]  # the pattern's own bound, stated for the apiserver's cost estimates
    assert LISTENER_GROUP.fullmatch("g" * longest) and not LISTENER_GROUP.fullmatch("g" * (longest + 1))


def test_crd_limits_are_exactly_the_sidecar_limits() -> None:
    declared = set(spec_schema()["properties"]["limits"]["properties"])
    assert declared == schema.keys(LimitsConfig)


def test_crd_rules_count_the_sidecar_defaults() -> None:
    rules = " ".join(r["rule"] for r in spec_schema()["properties"]["limits"]["x-kubernetes-validations"])
    used = dict(re.findall(r"has\(self\.(\w+)\) \? self\.\1 : (\d+)", rules))
    assert used and {k: int(v) for k, v in used.items()} == {
        key: default for _, key, _, default in schema.specs(LimitsConfig) if key in used}


def test_the_check_fails_on_a_wrong_bound() -> None:
    declared = prop(spec_schema(), "edge.connectionsPerUrl") | {"maximum": 65}
    cls, attr = SIDECAR_FIELDS["edge.connectionsPerUrl"]
    assert disagreements(declared, schema.spec_of(cls, attr), schema.default(cls, attr)) == {
        "maximum": (65, 64)}
