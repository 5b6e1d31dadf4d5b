"""What a tunnel may receive: grants from telebit-style token claims, and the shared secret file.

A token's `domains` claim grants each listed name and every name under it (`example.com` also covers
`*.example.com`, at any depth); its `ports` claim grants raw TCP ports. A tunnel only ever receives
traffic for what its tokens grant, so one customer can never claim another's name. An optional
`listenerGroups` claim limits the edge listeners the tunnel may serve on to those groups (docs/edge.md,
"Listener groups"); several tokens that limit it intersect, so no token's limit is ever widened.
The groups such a claim lists are also group-wide grants (`wide`): every client of those groups'
listeners, whatever its name or port, when no tunnel grants the name or port itself. A token without the
claim grants no group-wide anything: an unrestricted token never captures names it was not given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mproxy.config.common import GROUP_HINT, LISTENER_GROUP, MAX_LISTENER_GROUPS
from mproxy.edge import jwt
from mproxy.edge.jwt import TokenError

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
MAX_NAME = 253


def normalize_name(name: str) -> str | None:
    """Lowercase a DNS name and check its shape; None if it is not a usable name."""
    name = name.strip().lower().rstrip(".")
    if not name or len(name) > MAX_NAME:
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


@dataclass(frozen=True, slots=True)
class Grant:
    """The names and ports one or more tokens allow a tunnel to serve, and on which listener groups."""

    domains: frozenset[str] = field(default_factory=frozenset)
    ports: frozenset[int] = field(default_factory=frozenset)
    groups: frozenset[str] | None = None  # the listener groups allowed; None: any
    # Groups whose every client this grant takes (below specific grants): those a listenerGroups claim
    # lists, always within `groups`.
    wide: frozenset[str] = field(default_factory=frozenset)

    def allows(self, asked: frozenset[str] | None) -> bool:
        """Whether a tunnel may ask for the listener groups `asked`; asking for none (None) is always
        allowed: the tunnel then serves on the groups this grant allows."""
        return self.groups is None or asked is None or asked <= self.groups

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Grant:
        raw_domains = claims.get("domains", [])
        raw_ports = claims.get("ports", [])
        if not isinstance(raw_domains, list) or not all(isinstance(d, str) for d in raw_domains):
            raise TokenError("token claim 'domains' must be a list of names", "bad_claims")
        if not isinstance(raw_ports, list):
            raise TokenError("token claim 'ports' must be a list of port numbers", "bad_claims")
        domains: set[str] = set()
        for raw in raw_domains:
            name = normalize_name(raw)
            if name is None:
                raise TokenError(f"token claim 'domains' has an invalid name {raw[:64]!r}", "bad_claims")
            domains.add(name)
        ports: set[int] = set()
        for raw in raw_ports:
            port = raw
            if isinstance(raw, str) and raw.isdigit():
                port = int(raw)
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise TokenError("token claim 'ports' must hold numbers from 1 to 65535", "bad_claims")
            ports.add(port)
        groups = _groups_claim(claims)
        return cls(frozenset(domains), frozenset(ports), groups, groups or frozenset())

    def union(self, other: Grant) -> Grant:
        if self.groups is None or other.groups is None:
            groups = self.groups if other.groups is None else other.groups
        else:
            groups = self.groups & other.groups
        wide = self.wide | other.wide
        if groups is not None:
            wide &= groups  # a group another token forbids is never granted whole
        return Grant(self.domains | other.domains, self.ports | other.ports, groups, wide)

    @property
    def empty(self) -> bool:
        return not self.domains and not self.ports and not self.wide

    def covers_name(self, name: str) -> bool:
        """True when `name` is a granted domain or lies under one."""
        return any(name == d or name.endswith("." + d) for d in self.domains)

    def covers_port(self, port: int) -> bool:
        return port in self.ports


def _groups_claim(claims: Mapping[str, Any]) -> frozenset[str] | None:
    raw = claims.get("listenerGroups")
    if raw is None:
        return None
    if (not isinstance(raw, list) or len(raw) > MAX_LISTENER_GROUPS
            or not all(isinstance(g, str) and LISTENER_GROUP.fullmatch(g) for g in raw)):
        raise TokenError(f"token claim 'listenerGroups' must be a list of at most {MAX_LISTENER_GROUPS} "
                         f"group names ({GROUP_HINT})", "bad_claims")
    return frozenset(raw)


def verify(token: str, secret: bytes, *, now: float | None = None) -> Grant:
    """Verify a token and return its grant; raises TokenError with a reason label."""
    return Grant.from_claims(jwt.decode(token, secret, now=now))


def mint(secret: bytes, *, domains: Iterable[str] = (), ports: Iterable[int] = (),
         ttl: float | None = None, now: float | None = None, subject: str | None = None,
         listener_groups: Iterable[str] | None = None) -> str:
    """Mint a token granting `domains` and `ports`; `ttl` seconds until it expires (None: never);
    `listener_groups`: the only listener groups its tunnel may serve on (None: any)."""
    import time

    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"domains": list(domains), "ports": [int(p) for p in ports], "iat": issued}
    if listener_groups is not None:
        claims["listenerGroups"] = sorted(set(listener_groups))
    Grant.from_claims(claims)  # refuse to mint a token the edge would refuse
    if ttl is not None:
        claims["exp"] = issued + int(ttl)
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, secret)


def read_secret(path: str | Path) -> bytes:
    """Read the shared signing secret; surrounding whitespace (a trailing newline) is not part of it."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token secret file {path}: {exc.strerror}") from exc
    if not secret:
        raise ValueError(f"the token secret file {path} is empty; write a long random string into it")
    return secret
