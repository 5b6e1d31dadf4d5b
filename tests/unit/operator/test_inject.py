"""Sidecar injection into a pod: which Tunnel applies, the patched pod, idempotency and refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.unit.operator.fixtures import pod, tunnel

from mproxy_operator.inject import (
    InjectionRefused,
    apply_injection,
    choose_tunnel,
    is_injected,
    sidecar_hash,
    supports_native_sidecars,
)
from mproxy_operator.model import parse_spec
from mproxy_operator.podspec import SidecarDefaults

DEFAULTS = SidecarDefaults(image="registry.test/mproxy:1", image_pull_policy="IfNotPresent")


def _tunnel(name: str, **overrides: Any) -> dict[str, Any]:
    body = tunnel(**overrides)
    body["metadata"]["name"] = name
    return body


def _inject(p: dict[str, Any], native: bool = True, **overrides: Any) -> dict[str, Any]:
    out = copy.deepcopy(p)
    apply_injection(out, "shop", parse_spec(tunnel(**overrides)["spec"]), DEFAULTS, native=native)
    return out


CHOICES = [
    ("match", [_tunnel("a")], pod(), "a", ()),
    ("no match", [_tunnel("a", selector={"matchLabels": {"app": "other"}})], pod(), None, ()),
    ("first by name wins", [_tunnel("b"), _tunnel("a")], pod(), "a", ("b",)),
    ("connector tunnels never inject", [_tunnel("a", mode="Connector")], pod(), None, ()),
    (
        "expressions",
        [
            _tunnel(
                "a",
                selector={
                    "matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["shop", "cart"]},
                        {"key": "legacy", "operator": "DoesNotExist"},
                    ]
                },
            )
        ],
        pod(),
        "a",
        (),
    ),
    (
        "expression excludes",
        [
            _tunnel(
                "a", selector={"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["shop"]}]}
            )
        ],
        pod(),
        None,
        (),
    ),
    ("invalid tunnel skipped", [_tunnel("a", edge={"urls": []}), _tunnel("b")], pod(), "b", ()),
]


@pytest.mark.parametrize(
    ("tunnels", "the_pod", "name", "others"), [c[1:] for c in CHOICES], ids=[c[0] for c in CHOICES]
)
def test_choose_tunnel(
    tunnels: list[dict[str, Any]], the_pod: dict[str, Any], name: str | None, others: tuple[str, ...]
) -> None:
    choice = choose_tunnel(the_pod, tunnels)
    if name is None:
        assert choice is None
    else:
        assert choice is not None and choice.name == name and choice.others == others


def test_deleting_tunnel_is_not_chosen() -> None:
    t = _tunnel("a")
    t["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert choose_tunnel(pod(), [t]) is None


def test_native_sidecar_is_an_init_container_with_restart_policy_always() -> None:
    out = _inject(pod(initContainers=[{"name": "migrate", "image": "m"}]))
    init = out["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["migrate", "mproxy-sidecar"]
    sidecar = init[-1]
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]
    assert sidecar["image"] == "registry.test/mproxy:1"
    assert sidecar["args"] == ["sidecar", "--config", "/etc/mproxy/config.yaml"]
    assert sidecar["ports"] == [{"name": "mproxy-metrics", "containerPort": 9090, "protocol": "TCP"}]
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/healthz"),
    ):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "mproxy-metrics"}
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["resources"]["requests"] == {"cpu": "10m", "memory": "32Mi"}


def test_plain_container_when_native_sidecars_are_not_supported() -> None:
    out = _inject(pod(), native=False)
    assert [c["name"] for c in out["spec"]["containers"]] == ["app", "mproxy-sidecar"]
    assert "restartPolicy" not in out["spec"]["containers"][1]
    assert "initContainers" not in out["spec"]


def test_volumes_mounts_labels_and_annotations() -> None:
    t = tunnel()
    t["spec"]["edge"]["tokenSecretRef"] = {"name": "edge-token", "key": "jwt"}
    t["spec"]["edge"]["caRef"] = {"kind": "Secret", "name": "edge-ca", "key": "bundle.pem"}
    out = copy.deepcopy(pod(volumes=[{"name": "data", "emptyDir": {}}]))
    apply_injection(out, "shop", parse_spec(t["spec"]), DEFAULTS, native=True)
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    assert list(volumes) == ["data", "mproxy-config", "mproxy-token", "mproxy-ca", "mproxy-tmp"]
    assert volumes["mproxy-config"]["configMap"] == {"name": "mproxy-shop"}
    assert volumes["mproxy-token"]["secret"] == {
        "secretName": "edge-token",
        "items": [{"key": "jwt", "path": "token"}],
    }
    assert volumes["mproxy-ca"]["secret"] == {
        "secretName": "edge-ca",
        "items": [{"key": "bundle.pem", "path": "ca.crt"}],
    }
    mounts = {m["name"]: m["mountPath"] for m in out["spec"]["initContainers"][0]["volumeMounts"]}
    assert mounts == {
        "mproxy-config": "/etc/mproxy",
        "mproxy-token": "/var/run/mproxy/token",
        "mproxy-ca": "/var/run/mproxy/ca",
        "mproxy-tmp": "/tmp",
    }
    assert out["metadata"]["labels"] == {
        "app": "shop",
        "mproxy.dev/inject": "enabled",
        "mproxy.dev/tunnel": "shop",
    }
    ann = out["metadata"]["annotations"]
    assert ann["mproxy.dev/injected"] == "shop" and len(ann["mproxy.dev/sidecar-hash"]) == 16


def test_overrides_from_the_tunnel() -> None:
    out = _inject(
        pod(),
        sidecar={"image": "mine:2", "imagePullPolicy": "Always", "resources": {"limits": {"cpu": "1"}}},
        metrics={"port": 9400},
    )
    sidecar = out["spec"]["initContainers"][0]
    assert (sidecar["image"], sidecar["imagePullPolicy"]) == ("mine:2", "Always")
    assert sidecar["resources"] == {"limits": {"cpu": "1"}}
    assert sidecar["ports"][0]["containerPort"] == 9400


def test_injection_is_idempotent() -> None:
    once = _inject(pod())
    assert is_injected(once)
    assert not is_injected(pod())
    by_name_only = pod(containers=[{"name": "mproxy-sidecar", "image": "x"}])
    assert is_injected(by_name_only)


@pytest.mark.parametrize(
    ("the_pod", "match"),
    [
        (pod(volumes=[{"name": "mproxy-config", "emptyDir": {}}]), "volume named mproxy-config"),
        (pod(containers=[{"name": "app", "image": "a", "ports": [{"containerPort": 9090}]}]), "port 9090"),
    ],
)
def test_clashes_are_refused_with_advice(the_pod: dict[str, Any], match: str) -> None:
    before = copy.deepcopy(the_pod)
    with pytest.raises(InjectionRefused, match=match):
        apply_injection(the_pod, "shop", parse_spec(tunnel()["spec"]), DEFAULTS, native=True)
    assert the_pod["spec"] == before["spec"]


def test_sidecar_hash_changes_only_with_what_needs_a_restart() -> None:
    def h(**overrides: Any) -> str:
        return sidecar_hash("shop", parse_spec(tunnel(**overrides)["spec"]), DEFAULTS, native=True)

    base = h()
    assert h(routes=[]) == base  # routes reload live from the ConfigMap
    assert h(defaultRoute="web") == base
    assert h(sidecar={"image": "other:1"}) != base
    assert h(sidecar={"resources": {"requests": {"cpu": "1"}}}) != base
    assert h(edge={"urls": ["wss://e/"], "tokenSecretRef": {"name": "other"}}) != base


@pytest.mark.parametrize(
    ("major", "minor", "native"),
    [("1", "28", False), ("1", "29", True), ("1", "36+", True), ("2", "0", True), ("x", "1", False)],
)
def test_native_sidecar_support_by_version(major: str, minor: str, native: bool) -> None:
    assert supports_native_sidecars(major, minor) is native
