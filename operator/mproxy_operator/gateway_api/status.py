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
    generation: int, ok: bool, reason: str, message: str, previous: Iterable[Mapping[str, Any]], now: str,
    features: Iterable[str] = SUPPORTED_FEATURES,
) -> dict[str, Any]:
    prev = list(previous)
    return {
        "conditions": [condition("Accepted", ok, reason, message, generation, prev, now)],
        "supportedFeatures": [{"name": f} for f in sorted(features)],
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

    if "Programmed" in problems:  # served in principle, not by this connector build
        programmed = condition("Programmed", False, *problems["Programmed"], generation, prev, now)
    elif lst.served:
        programmed = condition("Programmed", True, "Programmed", "the connector serves it", generation, prev,
                               now)
    else:
        why = ("it has no usable certificate" if lst.accepted and lst.kinds
               else "it takes no route kind" if lst.accepted else "it is not accepted")
        programmed = condition("Programmed", False, "Invalid", f"the listener is not served: {why}",
                               generation, prev, now)
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


def gateway_accepted(gateway: Mapping[str, Any], listeners: Sequence[Listener]) -> tuple[bool, str, str]:
    """The Gateway's Accepted condition: False when nothing of it can be served."""
    if (gateway.get("spec") or {}).get("addresses"):
        return (False, "UnsupportedAddress",
                "spec.addresses cannot be chosen: the Gateway's addresses are the edge's")
    bad = [lst.name for lst in listeners if not lst.accepted]
    if listeners and len(bad) == len(listeners):
        return (False, "ListenersNotValid", f"no listener is valid: {', '.join(bad)} (see status.listeners)")
    if bad:
        # True: the spec lets a Gateway with invalid listeners be Accepted with this reason, and the
        # valid ones are served; each invalid one says why in status.listeners.
        return (True, "ListenersNotValid", f"listeners not valid: {', '.join(bad)} (see status.listeners)")
    return (True, "Accepted", "the Gateway is served by an mproxy connector")


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
