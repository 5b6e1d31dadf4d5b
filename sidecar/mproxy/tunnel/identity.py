"""Edge identity on the WebSocket upgrade, so sidecars can hold tunnels to every edge replica.

An mproxy edge answers every tunnel upgrade (101, and 409 when refused as a duplicate) with
`X-Mproxy-Edge-Id` (stable per process) and `X-Mproxy-Edge-Replicas` (how many edges serve the same
tunnels). A sidecar names, in `X-Mproxy-Have-Edges`, the edge ids it already holds all its connections to;
an edge whose id is listed refuses the upgrade with 409 before granting anything, so a sidecar dialling
through a load balancer learns "duplicate" with no stream at risk. telebit peers ignore unknown headers
both ways: a telebit relay announces nothing (the sidecar then behaves as with one edge), a telebit device
sends no list. `X-Mproxy-Edge-Replicas-Live: true` says the count is read live (the edge's `replicasFrom`)
and may change without the edge restarting: only then does a sidecar behind a balancer probe for it.
An mproxy sidecar sends `X-Mproxy-Peer: sidecar/1` on every upgrade: the edge may then pack frames the way
mproxy reads them (a `connection` frame shares its WebSocket message with data), which a telebit device
does not.
`X-Mproxy-Listener-Groups: a,b` on an upgrade asks the edge to route to this tunnel only the clients of its
listeners in those groups (the sidecar's `edge.listenerGroups`; docs/edge.md, "Listener groups"); no
header asks for none, as before.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mproxy.config.common import GROUP_HINT, LISTENER_GROUP, MAX_LISTENER_GROUPS

__all__ = ["ERROR_HEADER", "GROUPS_HEADER", "HAVE_HEADER", "ID_HEADER", "LIVE_HEADER", "PEER_HEADER",
           "PEER_SIDECAR", "REPLICAS_HEADER", "Announced", "default_edge_id", "groups_value", "have_value",
           "parse_announced", "parse_groups", "parse_have"]

ID_HEADER = "X-Mproxy-Edge-Id"
REPLICAS_HEADER = "X-Mproxy-Edge-Replicas"
LIVE_HEADER = "X-Mproxy-Edge-Replicas-Live"
HAVE_HEADER = "X-Mproxy-Have-Edges"
PEER_HEADER = "X-Mproxy-Peer"
PEER_SIDECAR = "sidecar/1"
GROUPS_HEADER = "X-Mproxy-Listener-Groups"
ERROR_HEADER = "X-Mproxy-Error"  # why an mproxy edge refused an upgrade (never holds a token)
MAX_HAVE = 64  # ids named in one request (a sidecar never expects more edges than this per URL)
MAX_REPLICAS = 1000
_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")


@dataclass(frozen=True, slots=True)
class Announced:
    id: str
    replicas: int
    live: bool = False  # the count follows the edges' EndpointSlices (it can change at any time)


def default_edge_id() -> str:
    """$POD_NAME (the chart sets it from the downward API), else hostname-pid; cut to a valid id."""
    raw = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", raw)[-63:]
    return cleaned or f"edge-{os.getpid()}"


def parse_announced(headers: Mapping[str, str]) -> Announced | None:
    """The identity an edge announced, or None (a telebit relay, or values that are not well formed)."""
    edge_id = headers.get(ID_HEADER, "")
    if not _ID.fullmatch(edge_id):
        return None
    try:
        replicas = int(headers.get(REPLICAS_HEADER, "1"))
    except ValueError:
        replicas = 1
    live = headers.get(LIVE_HEADER, "").strip().lower() == "true"
    return Announced(edge_id, min(max(replicas, 1), MAX_REPLICAS), live)


def have_value(ids: Iterable[str]) -> str:
    return ",".join(sorted(ids)[:MAX_HAVE])


def parse_have(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(v for v in (p.strip() for p in value.split(",")[:MAX_HAVE]) if _ID.fullmatch(v))


def groups_value(groups: Iterable[str]) -> str:
    return ",".join(sorted(set(groups)))


def parse_groups(value: str | None) -> frozenset[str] | None:
    """The listener groups a tunnel asks for (None: the header is absent or empty); raises ValueError with
    what is wrong, for the edge to refuse the upgrade with."""
    if value is None or not value.strip():
        return None
    items = [p.strip() for p in value.split(",")]
    if len(items) > MAX_LISTENER_GROUPS:
        raise ValueError(f"{GROUPS_HEADER} names over {MAX_LISTENER_GROUPS} groups")
    bad = [g for g in items if not LISTENER_GROUP.fullmatch(g)]
    if bad:
        raise ValueError(f"{GROUPS_HEADER}: {bad[0][:64]!r} is not a listener group name ({GROUP_HINT})")
    return frozenset(items)
