"""Kubernetes label selectors: matching in Python and the string form for list calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mproxy_operator.model import Selector


def matches(selector: Selector, labels: Mapping[str, str] | None) -> bool:
    """True when `labels` satisfy the selector. An empty selector matches everything, as in Kubernetes."""
    labels = labels or {}
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions:
        key = expr["key"]
        op = expr["operator"]
        values = set(expr.get("values") or ())
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def to_string(selector: Selector) -> str:
    """The `labelSelector=` query form, e.g. "app=web,tier in (a,b),!legacy"."""
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for expr in selector.match_expressions:
        key = expr["key"]
        values = ",".join(sorted(expr.get("values") or ()))
        op = expr["operator"]
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(parts)


def template_labels(workload: Mapping[str, Any]) -> Mapping[str, str]:
    return (((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
