"""One address per Gateway: assign each Gateway of a class one edge listener group of its pool (pure).

The GatewayClass parameters may carry `listenerGroups`, a pool `{GROUP: [ADDRESS, ...]}`: the edge's
listener groups (docs/edge.md, "Listener groups") and the public addresses each is reachable at. With a
pool, every Gateway of the class gets one group of its own: its status.addresses are that group's
addresses and its connector asks the edge for that group only (`edge.listenerGroups`), so a name one
Gateway refuses is never served at its address by another Gateway's route.

The state is in the apiserver: the group a Gateway holds is written on its connector ConfigMap (the
annotation GROUP_ANNOTATION, owned by the Gateway, deleted with it), so an operator restart or another
replica reads the same assignment back. Each reconcile computes the whole class's assignment:
1. a Gateway keeps the group it holds (oldest first when two claim one: a race of two replicas), unless
   its spec.addresses now name another group's address or the group left the pool;
2. a Gateway whose spec.addresses name pool addresses gets the group holding them, if free (else
   Programmed False, AddressNotUsable); addresses not in the pool are UnsupportedAddress, as without one;
3. the others, oldest first, get the next free group round robin (after the class's last one, recorded
   on the GatewayClass); none left: Programmed False,
   AddressNotAssigned. A deleted Gateway's group is free at once (it is no longer listed), but is given
   out after every other free group while its record remains (its connector may still be draining).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mproxy_operator.gateway_api.listeners import Listener
from mproxy_operator.gateway_api.params import Address
from mproxy_operator.gateway_api.status import gateway_accepted

# On a Gateway's connector ConfigMap: the listener group the Gateway holds.
GROUP_ANNOTATION = "mproxy.dev/listener-group"
# On the GatewayClass: the listener group it handed out last (free groups go round robin from there).
LAST_ANNOTATION = "mproxy.dev/last-listener-group"

Key = tuple[str, str]  # (namespace, name) of a Gateway


@dataclass(frozen=True, slots=True)
class Assignment:
    """A Gateway's group and addresses, or why it has none: `problem` is (condition, reason, message)
    with condition Accepted (UnsupportedAddress) or Programmed (AddressNotAssigned, AddressNotUsable)."""

    group: str | None
    addresses: tuple[Address, ...] = ()
    problem: tuple[str, str, str] | None = None


def _key(gw: Mapping[str, Any]) -> Key:
    return (str(gw["metadata"]["namespace"]), str(gw["metadata"]["name"]))


def _age(gw: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = gw.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace")), str(meta.get("name")))


def requested(gw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """spec.addresses as (type, value); an entry without a value asks for any address of its type."""
    return [(str(a.get("type") or "IPAddress"), str(a.get("value") or ""))
            for a in (gw.get("spec") or {}).get("addresses") or []]


def _wanted_group(
    gw: Mapping[str, Any], pool: Mapping[str, Sequence[Address]]
) -> tuple[str | None, tuple[str, str, str] | None]:
    """The group spec.addresses name (None: any group), or the Accepted problem they are."""
    wanted = requested(gw)
    bad_type = [t for t, _v in wanted if t not in ("IPAddress", "Hostname")]
    if bad_type:
        return None, ("Accepted", "UnsupportedAddress",
                      f"spec.addresses: type {bad_type[0]} is not supported (IPAddress or Hostname)")
    groups = set()
    for type_, value in wanted:
        if not value:
            continue
        holders = [g for g, addrs in pool.items() if Address(type_, value.lower() if type_ == "Hostname"
                                                             else value) in addrs]
        if not holders:
            known = ", ".join(a.value for addrs in pool.values() for a in addrs)
            return None, ("Accepted", "UnsupportedAddress",
                          f"spec.addresses: {value} is not an address of the GatewayClass's listenerGroups "
                          f"pool ({known}); name one of those or leave spec.addresses out")
        groups.add(holders[0])
    if len(groups) > 1:
        return None, ("Accepted", "UnsupportedAddress",
                      "spec.addresses name addresses of several listener groups "
                      f"({', '.join(sorted(groups))}); a Gateway has the addresses of one group")
    return (groups.pop() if groups else None), None


def rotated(pool: Sequence[str], after: str | None) -> list[str]:
    """The pool's groups starting just after `after` (the group handed out last; LAST_ANNOTATION)."""
    groups = list(pool)
    if after in groups:
        i = groups.index(after) + 1
        groups = groups[i:] + groups[:i]
    return groups


def assign(
    gateways: Iterable[Mapping[str, Any]],
    pool: Mapping[str, Sequence[Address]],
    held: Mapping[Key, str],
    after: str | None = None,
) -> dict[Key, Assignment]:
    """Every Gateway of one class -> its Assignment. `pool` is in the ConfigMap's order; `held` is the
    group each Gateway's connector ConfigMap says it holds (GROUP_ANNOTATION); `after` the group the
    class handed out last (LAST_ANNOTATION): free groups are handed out round robin from there, so a
    group a deleted Gateway just gave back (its connector may still be draining on that address) is
    the last to be given again."""
    ordered = sorted(gateways, key=_age)
    out: dict[Key, Assignment] = {}
    taken: dict[str, Key] = {}
    wants: dict[Key, str | None] = {}

    def give(key: Key, group: str) -> None:
        taken[group] = key
        out[key] = Assignment(group, tuple(pool[group]))

    for gw in ordered:
        key = _key(gw)
        want, problem = _wanted_group(gw, pool)
        if problem is not None:
            out[key] = Assignment(None, problem=problem)
            continue
        wants[key] = want
    # 1. Keep what is held, oldest first.
    for gw in ordered:
        key = _key(gw)
        if key not in wants:
            continue
        group = held.get(key)
        if group is not None and group in pool and group not in taken and wants[key] in (None, group):
            give(key, group)
    # A group whose record outlives its Gateway (the connector ConfigMap awaiting garbage collection) may
    # still be served by that Gateway's connector while it drains: hand it out last, so a new Gateway
    # does not share its address with the old one's tunnels.
    listed = set(wants) | set(out)
    lingering = {g for k, g in held.items() if k not in listed}
    # 2. Requested groups, then 3. the first free group, each oldest first.
    for by_request in (True, False):
        free = sorted((g for g in rotated(list(pool), after) if g not in taken), key=lambda g: g in lingering)
        for gw in ordered:
            key = _key(gw)
            if key in out or key not in wants or (wants[key] is not None) != by_request:
                continue
            want = wants[key]
            if want is not None:
                if want in taken:
                    ns, name = taken[want]
                    out[key] = Assignment(None, problem=(
                        "Programmed", "AddressNotUsable",
                        f"spec.addresses: the addresses of listener group {want} are in use by Gateway "
                        f"{ns}/{name}; name another group's address or leave spec.addresses out"))
                else:
                    give(key, want)
                continue
            if free:
                give(key, free.pop(0))
            else:
                out[key] = Assignment(None, problem=(
                    "Programmed", "AddressNotAssigned",
                    f"every listener group of the GatewayClass's pool ({len(pool)}) is in use by an "
                    "older Gateway; add a group to listenerGroups (and its listeners to the edge) or "
                    "delete a Gateway of this class"))
    return out


def accepted(
    assignment: Assignment | None, gateway: Mapping[str, Any], listeners: Sequence[Listener]
) -> tuple[bool, str, str]:
    """The Gateway's Accepted condition. Without a pool (assignment None) as gateway_accepted says (any
    spec.addresses: UnsupportedAddress); with one, spec.addresses naming pool addresses are accepted."""
    if assignment is None:
        return gateway_accepted(gateway, listeners)
    if assignment.problem is not None and assignment.problem[0] == "Accepted":
        return (False, assignment.problem[1], assignment.problem[2])
    without = {**gateway, "spec": {**(gateway.get("spec") or {}), "addresses": []}}
    return gateway_accepted(without, listeners)


def programmed(assignment: Assignment | None) -> tuple[bool, str, str] | None:
    """The Programmed condition when the Gateway has no group (its connector is not run), else None."""
    if assignment is None or assignment.group is not None:
        return None
    if assignment.problem is not None and assignment.problem[0] == "Programmed":
        return (False, assignment.problem[1], assignment.problem[2])
    return (False, "Invalid", "the Gateway is not accepted: no listener group is assigned")
