"""Gateway and GatewayClass status in the spec's terms (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mproxy_operator import status as tunnel_status
from mproxy_operator.gateway_api.listeners import Listener
from mproxy_operator.gateway_api.names import GROUP, SUPPORTED_FEATURES
from mproxy_operator.gateway_api.params import Address


def condition(
    type_: str, ok: bool, reason: str, message: str, generation: int,
    previous: Sequence[Mapping[str, Any]], now: str,
) -> dict[str, Any]:
    return tunnel_status.condition(type_, ok, reason, message, generation, previous, now)


def class_status(
    generation: int, ok: bool, reason: str, message: str, previous: Iterable[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    prev = list(previous)
    return {
        "conditions": [condition("Accepted", ok, reason, message, generation, prev, now)],
        "supportedFeatures": [{"name": f} for f in sorted(SUPPORTED_FEATURES)],
    }


def _listener_status(
    lst: Listener, attached: int, generation: int, prev: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    problems = {c: (r, m) for c, r, m in lst.problems}

    def cond(type_: str, ok_reason: str, ok_message: str, bad_is_true: bool = False) -> dict[str, Any]:
        if type_ in problems:
            reason, message = problems[type_]
            return condition(type_, bad_is_true, reason, message, generation, prev, now)
        return condition(type_, not bad_is_true, ok_reason, ok_message, generation, prev, now)

    programmed = (
        condition("Programmed", True, "Programmed", "the connector serves it", generation, prev, now)
        if lst.valid
        else condition("Programmed", False, "Invalid", "the listener is not valid", generation, prev, now)
    )
    return {
        "name": lst.name,
        "supportedKinds": [{"group": GROUP, "kind": k} for k in lst.kinds],
        "attachedRoutes": attached,
        "conditions": [
            cond("Accepted", "Accepted", "the listener is valid"),
            cond("Conflicted", "NoConflicts", "no other listener conflicts", bad_is_true=True),
            cond("ResolvedRefs", "ResolvedRefs", "every reference resolved"),
            programmed,
        ],
    }


def gateway_status(
    *,
    generation: int,
    listeners: Sequence[Listener],
    attached: Mapping[str, int],
    addresses: Sequence[Address],
    accepted: tuple[bool, str, str],
    programmed: tuple[bool, str, str],
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    prev = list(previous.get("conditions") or [])
    prev_listeners = {lst.get("name"): lst.get("conditions") or [] for lst in previous.get("listeners") or []}
    return {
        "addresses": [{"type": a.type, "value": a.value} for a in addresses],
        "conditions": [
            condition("Accepted", *accepted, generation, prev, now),
            condition("Programmed", *programmed, generation, prev, now),
        ],
        "listeners": [
            _listener_status(
                lst, attached.get(lst.name, 0), generation, prev_listeners.get(lst.name, []), now
            )
            for lst in listeners
        ],
    }
