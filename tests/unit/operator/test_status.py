"""Status conditions: Ready follows RoutesResolved and SidecarsInjected / ConnectorAvailable."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.operator.fixtures import SERVICES, tunnel

from mproxy_operator.model import parse_spec
from mproxy_operator.resolve import resolve_routes
from mproxy_operator.status import (
    ConnectorCounts,
    PodCounts,
    build_status,
    condition,
    failed_status,
    pod_is_ready,
    unchanged,
)

NOW = "2026-11-25T09:00:00Z"


TWO_PODS = PodCounts(2, 2, 1)
NO_CONNECTOR = ConnectorCounts()


def _status(
    services: dict[str, Any] = SERVICES,
    pods: PodCounts = TWO_PODS,
    connector: ConnectorCounts = NO_CONNECTOR,
    previous: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    spec = parse_spec(tunnel(**overrides)["spec"])
    resolved, unresolved = resolve_routes(spec.routes, services, "prod")
    return build_status(
        generation=3,
        spec=spec,
        resolved=resolved,
        unresolved=unresolved,
        pods=pods,
        connector=connector,
        config_map="mproxy-shop",
        config_hash="c",
        sidecar_hash="s",
        previous=previous or [],
        now=NOW,
    )


def _conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


CASES = [
    (
        "all good",
        {},
        {
            "Ready": ("True", "Ready"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "SidecarsInjected": ("True", "AllPodsInjected"),
        },
    ),
    (
        "missing service",
        {"services": {"web": SERVICES["web"]}},
        {
            "Ready": ("False", "RoutesUnresolved"),
            "RoutesResolved": ("False", "ServiceNotFound"),
            "SidecarsInjected": ("True", "AllPodsInjected"),
        },
    ),
    (
        "no pods",
        {"pods": PodCounts()},
        {
            "Ready": ("False", "NoPods"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "SidecarsInjected": ("False", "NoPods"),
        },
    ),
    (
        "pods without sidecar",
        {"pods": PodCounts(3, 1, 1)},
        {
            "Ready": ("False", "PodsWithoutSidecar"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "SidecarsInjected": ("False", "PodsWithoutSidecar"),
        },
    ),
    (
        "connector available",
        {"mode": "Connector", "connector": ConnectorCounts(True, 2, 2, True)},
        {
            "Ready": ("True", "Ready"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "ConnectorAvailable": ("True", "MinimumReplicasAvailable"),
        },
    ),
    (
        "connector not ready",
        {"mode": "Connector", "connector": ConnectorCounts(True, 2, 0, False)},
        {
            "Ready": ("False", "ReplicasNotReady"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "ConnectorAvailable": ("False", "ReplicasNotReady"),
        },
    ),
    (
        "connector missing",
        {"mode": "Connector"},
        {
            "Ready": ("False", "DeploymentMissing"),
            "RoutesResolved": ("True", "AllRoutesResolved"),
            "ConnectorAvailable": ("False", "DeploymentMissing"),
        },
    ),
]


@pytest.mark.parametrize(("kwargs", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conditions(kwargs: dict[str, Any], want: dict[str, tuple[str, str]]) -> None:
    status = _status(**kwargs)
    assert _conds(status) == want
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["conditions"][0]["type"] == "Ready"


def test_counts_and_routes() -> None:
    status = _status(services={"web": SERVICES["web"]}, pods=PodCounts(4, 3, 2))
    assert (status["selectedPods"], status["injectedPods"], status["readyPods"]) == (4, 3, 2)
    assert status["routes"][0] == {
        "name": "web",
        "backend": "web.prod.svc.cluster.local:443",
        "resolved": True,
    }
    assert status["routes"][1]["resolved"] is False and "bastion" in status["routes"][1]["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "Service prod/bastion does not exist" in ready["message"]


def test_transition_time_moves_only_when_status_flips() -> None:
    old = [condition("Ready", True, "Ready", "", 1, [], "2026-01-01T00:00:00Z")]
    assert condition("Ready", True, "Ready", "x", 2, old, NOW)["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert condition("Ready", False, "NoPods", "x", 2, old, NOW)["lastTransitionTime"] == NOW


def test_failed_status() -> None:
    status = failed_status(5, "InvalidSpec", "spec.mode: bad", [], NOW)
    assert status == {
        "observedGeneration": 5,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InvalidSpec",
                "message": "spec.mode: bad",
                "observedGeneration": 5,
                "lastTransitionTime": NOW,
            }
        ],
    }


@pytest.mark.parametrize(
    ("pod_status", "ready"),
    [
        ({"conditions": [{"type": "Ready", "status": "True"}]}, True),
        ({"conditions": [{"type": "Ready", "status": "False"}]}, False),
        ({}, False),
    ],
)
def test_pod_is_ready(pod_status: dict[str, Any], ready: bool) -> None:
    assert pod_is_ready({"status": pod_status}) is ready


def test_unchanged_status_is_not_written_again() -> None:
    first = _status()
    stored = {k: v for k, v in first.items() if v is not None}
    assert unchanged(_status(previous=first["conditions"]), stored)  # same facts, same timestamps
    assert not unchanged(_status(pods=PodCounts(3, 3, 3)), stored)
    assert not unchanged(first, {**stored, "connectorReplicas": 2})  # a stale connector count must go
    assert not unchanged(first, {**stored, "gatewayReplicas": 2})  # so must one from before the rename
