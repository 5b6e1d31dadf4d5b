"""What a tunnel may receive: grants from telebit-style token claims, and the shared secret file.

A token's `domains` claim grants each listed name and every name under it (`example.com` also covers
`*.example.com`, at any depth); its `ports` claim grants raw TCP ports. A tunnel only ever receives
traffic for what its tokens grant, so one customer can never claim another's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """The names and ports one or more tokens allow a tunnel to serve."""

    domains: frozenset[str] = field(default_factory=frozenset)
    ports: frozenset[int] = field(default_factory=frozenset)

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
        return cls(frozenset(domains), frozenset(ports))

    def union(self, other: Grant) -> Grant:
        return Grant(self.domains | other.domains, self.ports | other.ports)

    @property
    def empty(self) -> bool:
        return not self.domains and not self.ports

    def covers_name(self, name: str) -> bool:
        """True when `name` is a granted domain or lies under one."""
        return any(name == d or name.endswith("." + d) for d in self.domains)

    def covers_port(self, port: int) -> bool:
        return port in self.ports


def verify(token: str, secret: bytes, *, now: float | None = None) -> Grant:
    """Verify a token and return its grant; raises TokenError with a reason label."""
    return Grant.from_claims(jwt.decode(token, secret, now=now))


def mint(secret: bytes, *, domains: Iterable[str] = (), ports: Iterable[int] = (),
         ttl: float | None = None, now: float | None = None, subject: str | None = None) -> str:
    """Mint a token granting `domains` and `ports`; `ttl` seconds until it expires (None: never)."""
    import time

    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"domains": list(domains), "ports": [int(p) for p in ports], "iat": issued}
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
