"""ReferenceGrant: whether objects of one kind in one namespace may refer to an object in another (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mproxy_operator.gateway_api.names import GROUP


def granted(grants: Sequence[Mapping[str, Any]], from_kind: str, from_ns: str, to_kind: str,
            to_name: str) -> bool:
    """A ReferenceGrant among `grants` (those of the target's namespace) lets `from_kind`s of `from_ns`
    (a Gateway API kind) refer to the core `to_kind` named `to_name`."""
    for g in grants:
        spec = g.get("spec") or {}
        src = any(
            f.get("group") == GROUP and f.get("kind") == from_kind and f.get("namespace") == from_ns
            for f in spec.get("from") or []
        )
        dst = any(
            t.get("group", "") == "" and t.get("kind") == to_kind and t.get("name", to_name) == to_name
            for t in spec.get("to") or []
        )
        if src and dst:
            return True
    return False
