"""The GatewayClass's parametersRef: a ConfigMap saying which edge the connectors dial (pure parser).

    apiVersion: v1
    kind: ConfigMap
    metadata: {name: mproxy-edge, namespace: mproxy-system}
    data:
      edgeURLs: wss://edge.example.com/mproxy        # one or more, comma or newline separated
      tokenSecret: edge-token                         # a Secret of that name in each Gateway's namespace
      tokenSecretKey: token                           # optional, default "token"
      addresses: 203.0.113.7, edge.example.com        # the edge's public addresses (Gateway status)
      replicas: "2"                                   # optional: connector replicas per Gateway
      listenerGroups: |                               # optional, instead of addresses: one per Gateway
        gw-a: [203.0.113.10]
        gw-b: [203.0.113.11]
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mproxy.config.common import GROUP_HINT, LISTENER_GROUP

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class ParamsError(ValueError):
    """The parameters are missing or wrong; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Address:
    type: str  # IPAddress | Hostname
    value: str


@dataclass(frozen=True, slots=True)
class ClassParams:
    edge_urls: tuple[str, ...]
    token_secret: str
    token_key: str = "token"  # noqa: S105 (a key name)
    addresses: tuple[Address, ...] = ()
    replicas: int = 2
    # The address pool (addresses.py): the edge's listener groups, in the ConfigMap's order, each with
    # the public addresses it is reachable at. Empty: every Gateway has `addresses`.
    listener_groups: tuple[tuple[str, tuple[Address, ...]], ...] = ()

    @property
    def pool(self) -> dict[str, tuple[Address, ...]]:
        return dict(self.listener_groups)


MAX_GROUPS = 1024  # listener groups in one pool


def parse_pool(text: str) -> tuple[tuple[str, tuple[Address, ...]], ...]:
    """`listenerGroups`: YAML `{GROUP: [ADDRESS, ...]}` (or `GROUP: ADDRESS`); raises ParamsError."""
    hint = "YAML mapping each edge listener group to its addresses, e.g. `gw-a: [203.0.113.10]`"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"listenerGroups is not YAML ({hint}): {exc}") from None
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ParamsError(f"listenerGroups must be a {hint}")
    if len(data) > MAX_GROUPS:
        raise ParamsError(f"listenerGroups has {len(data)} groups; at most {MAX_GROUPS}")
    out: list[tuple[str, tuple[Address, ...]]] = []
    seen: dict[Address, str] = {}
    for group, values in data.items():
        if not isinstance(group, str) or not LISTENER_GROUP.fullmatch(group):
            raise ParamsError(f"listenerGroups: {group!r} is not a listener group name ({GROUP_HINT})")
        items = [values] if isinstance(values, str) else values
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            raise ParamsError(f"listenerGroups: {group} must list one or more addresses (IPs or DNS names)")
        try:
            addrs = tuple(dict.fromkeys(address(v.strip()) for v in items))
        except ParamsError as exc:
            raise ParamsError(f"listenerGroups: {group}: {str(exc).removeprefix('addresses: ')}") from None
        for a in addrs:
            if a in seen:
                raise ParamsError(f"listenerGroups: {a.value} is in both {seen[a]} and {group}; "
                                  "an address belongs to one group")
            seen[a] = group
        out.append((group, addrs))
    return tuple(out)


def _split(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\s]+", value) if v.strip()]


def address(value: str) -> Address:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value.lower()):
            raise ParamsError(f"addresses: {value!r} is neither an IP address nor a DNS name") from None
        return Address("Hostname", value.lower())
    return Address("IPAddress", value)


def parse_params(config_map: Mapping[str, Any]) -> ClassParams:
    """Raises ParamsError naming the key."""
    data = config_map.get("data") or {}
    where = "ConfigMap {}/{}".format(
        (config_map.get("metadata") or {}).get("namespace"), (config_map.get("metadata") or {}).get("name")
    )
    urls = _split(str(data.get("edgeURLs") or ""))
    if not urls:
        raise ParamsError(f"{where}: edgeURLs is required (the ws:// or wss:// URLs of the edge relay)")
    bad = [u for u in urls if not u.startswith(("ws://", "wss://"))]
    if bad:
        raise ParamsError(f"{where}: edgeURLs must be ws:// or wss:// URLs (got {bad[0]!r})")
    secret = str(data.get("tokenSecret") or "").strip()
    if not secret:
        raise ParamsError(f"{where}: tokenSecret is required (the Secret holding the edge token)")
    replicas_text = str(data.get("replicas") or "2").strip()
    if not replicas_text.isdigit() or not 0 <= int(replicas_text) <= 100:
        raise ParamsError(f"{where}: replicas must be an integer 0-100 (got {replicas_text!r})")
    try:
        addresses = tuple(address(a) for a in _split(str(data.get("addresses") or "")))
        pool = parse_pool(str(data.get("listenerGroups") or ""))
    except ParamsError as exc:
        raise ParamsError(f"{where}: {exc}") from None
    if pool and addresses:
        raise ParamsError(f"{where}: give addresses or listenerGroups, not both (with listenerGroups each "
                          "Gateway has its group's addresses)")
    return ClassParams(
        edge_urls=tuple(urls),
        token_secret=secret,
        token_key=str(data.get("tokenSecretKey") or "token").strip(),
        addresses=addresses,
        replicas=int(replicas_text),
        listener_groups=pool,
    )
