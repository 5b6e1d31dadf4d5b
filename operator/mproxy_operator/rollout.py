"""Rolling the workloads whose pods carry (or should lose) a Tunnel's sidecar.

A running sidecar reloads its routes from the ConfigMap, but not a new image, new resources or new
volumes: those need new pods. Like `kubectl rollout restart`, the operator bumps an annotation on the
pod template, and the workload's own controller replaces its pods at its own pace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mproxy_operator import names
from mproxy_operator.model import Selector
from mproxy_operator.selectors import matches, template_labels

WORKLOAD_KINDS = ("deployments", "statefulsets", "daemonsets")


def selects_workload(selector: Selector, workload: Mapping[str, Any]) -> bool:
    labels = template_labels(workload)
    return labels.get(names.INJECT_LABEL) == names.INJECT_ENABLED and matches(selector, labels)


def workloads_to_roll(selector: Selector, workloads: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(
        str(w["metadata"]["name"])
        for w in workloads
        if not (w.get("metadata") or {}).get("deletionTimestamp") and selects_workload(selector, w)
    )


def roll_patch(reason: str, now: str) -> dict[str, Any]:
    """A merge patch that makes the workload controller replace its pods."""
    return {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        names.ROLLED_ANNOTATION: now,
                        names.ROLL_REASON_ANNOTATION: reason,
                    }
                }
            }
        }
    }
