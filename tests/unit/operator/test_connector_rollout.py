"""Connector Deployment and workload rollout builders."""

from __future__ import annotations

from typing import Any

from tests.unit.operator.fixtures import tunnel

from mproxy_operator.connector import connector_deployment
from mproxy_operator.model import Selector, parse_spec
from mproxy_operator.podspec import SidecarDefaults
from mproxy_operator.rollout import roll_patch, workloads_to_roll
from mproxy_operator.selectors import matches, to_string


def test_connector_deployment() -> None:
    body = tunnel(mode="Connector", selector=None, connector={"replicas": 3})
    dep = connector_deployment(body, parse_spec(body["spec"]), SidecarDefaults(image="img:1"))
    assert dep["metadata"]["name"] == "mproxy-connector-shop" and dep["metadata"]["namespace"] == "prod"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = dep["spec"]
    assert spec["replicas"] == 3
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in spec["selector"]["matchLabels"].items())
    assert "helm.sh/chart" not in spec["selector"]["matchLabels"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["name"] == "mproxy-sidecar" and container["image"] == "img:1"
    assert "restartPolicy" not in container
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # ready = tunnel connected
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False
    assert {v["name"] for v in spec["template"]["spec"]["volumes"]} >= {"mproxy-config", "mproxy-token"}


def _workload(name: str, labels: dict[str, str], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"template": {"metadata": {"labels": labels}}}}


def test_workloads_to_roll_need_the_selector_and_the_opt_in_label() -> None:
    selector = Selector({"app": "shop"})
    workloads = [
        _workload("b", {"app": "shop", "mproxy.dev/inject": "enabled"}),
        _workload("a", {"app": "shop", "mproxy.dev/inject": "enabled"}),
        _workload("no-opt-in", {"app": "shop"}),
        _workload("other", {"app": "cart", "mproxy.dev/inject": "enabled"}),
        _workload("gone", {"app": "shop", "mproxy.dev/inject": "enabled"}, deleting=True),
    ]
    assert workloads_to_roll(selector, workloads) == ["a", "b"]


def test_roll_patch_touches_only_the_pod_template_annotations() -> None:
    patch = roll_patch("image changed", "2026-11-25T09:00:00Z")
    assert patch == {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "mproxy.dev/rolled-at": "2026-11-25T09:00:00Z",
                        "mproxy.dev/roll-reason": "image changed",
                    }
                }
            }
        }
    }


def test_selector_string_form_agrees_with_matching() -> None:
    selector = Selector(
        {"app": "shop"},
        (
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
        ),
    )
    assert to_string(selector) == "app=shop,tier in (a,b),!legacy,zone,env notin (dev)"
    assert matches(selector, {"app": "shop", "tier": "a", "zone": "z"})
    assert not matches(selector, {"app": "shop", "tier": "a", "zone": "z", "legacy": "1"})
    assert not matches(selector, {"app": "shop", "tier": "a", "zone": "z", "env": "dev"})
    assert not matches(selector, {"app": "shop", "tier": "c", "zone": "z"})
    assert matches(Selector(), {})
