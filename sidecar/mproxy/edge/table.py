"""The edge's tunnel directory: which tunnels' tokens grant a name or a port, and which one gets the next
client. (The sidecar's `RouteTable`, mproxy.routing, maps a stream to a backend; this maps a client to a
tunnel.)

A tunnel is registered under every domain and port its tokens grant. A name is looked up longest
suffix first (`a.b.example.com` tries `a.b.example.com`, `b.example.com`, `example.com`), so a more
specific grant wins over a broader one. Among the tunnels for a key the next client goes to the one with
the fewest active streams; ties are broken round robin, so replicas share load evenly even when idle.

Listener groups: a client of a listener in group G (`group`) goes only to tunnels whose `listener_groups`
holds G or is None (they asked for no group); a client of a listener with no group goes only to tunnels
with None. The longest suffix is looked up among those tunnels, so another group's more specific grant
never hides a broader one this client may use.

Group-wide grants: a tunnel whose tokens' `listenerGroups` claim lists G, and that serves on G, takes every
client of G's listeners (any name, any port) that no tunnel there grants specifically: the name's suffixes
and the port are looked up first, and only when none matches do the group-wide tunnels get the client
(docs/edge.md, "Listener groups": a Gateway owns its address).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from mproxy.edge.auth import Grant


class Routable(Protocol):
    @property
    def active_streams(self) -> int: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def listener_groups(self) -> frozenset[str] | None: ...  # None: every listener


T = TypeVar("T", bound=Routable)


class TunnelDirectory(Generic[T]):
    def __init__(self) -> None:
        # Names (str) and ports (int) share one table; the key types never collide.
        self._keys: dict[str | int, list[T]] = {}
        self._grants: dict[int, tuple[T, Grant]] = {}
        self._turn: dict[str | int, int] = {}
        self._wide: dict[str, list[T]] = {}  # group -> the tunnels granted every client of its listeners
        self._wide_of: dict[int, frozenset[str]] = {}

    @staticmethod
    def _keys_of(grant: Grant) -> list[str | int]:
        return [*grant.domains, *grant.ports]

    def set_grant(self, tunnel: T, grant: Grant) -> None:
        """Register `tunnel` for exactly what `grant` allows (replacing any earlier grant)."""
        self.remove(tunnel)
        if grant.empty:
            return
        self._grants[id(tunnel)] = (tunnel, grant)
        for key in self._keys_of(grant):
            self._keys.setdefault(key, []).append(tunnel)
        wide = grant.wide & (tunnel.listener_groups or frozenset())
        if wide:
            self._wide_of[id(tunnel)] = wide
            for group in wide:
                self._wide.setdefault(group, []).append(tunnel)

    def remove(self, tunnel: T) -> None:
        """Forget `tunnel` at once: no new client is routed to it after this returns."""
        entry = self._grants.pop(id(tunnel), None)
        if entry is None:
            return
        _, grant = entry
        for key in self._keys_of(grant):
            tunnels = self._keys.get(key)
            if tunnels is None:
                continue
            tunnels[:] = [t for t in tunnels if t is not tunnel]
            if not tunnels:
                del self._keys[key]
        for group in self._wide_of.pop(id(tunnel), ()):
            tunnels = self._wide.get(group, [])
            tunnels[:] = [t for t in tunnels if t is not tunnel]
            if not tunnels:
                self._wide.pop(group, None)

    @staticmethod
    def _suffixes(name: str) -> Iterator[str]:
        while name:
            yield name
            _, _, name = name.partition(".")

    @staticmethod
    def _of_group(tunnels: list[T], group: str | None) -> list[T]:
        """The tunnels that take clients of a listener in `group` (None: a listener with no group)."""
        if group is None:
            return [t for t in tunnels if t.listener_groups is None]
        return [t for t in tunnels if t.listener_groups is None or group in t.listener_groups]

    def match_name(self, name: str, group: str | None = None) -> tuple[str | None, list[T]]:
        """The most specific granted domain covering `name` for clients of `group`, and its tunnels; else
        (`wide_key(group)`, the tunnels granted all of `group`)."""
        for key in self._suffixes(name):
            tunnels = self._of_group(self._keys.get(key, []), group)
            if tunnels:
                return key, tunnels
        if group is not None and (wide := self._wide.get(group)):
            return wide_key(group), list(wide)
        return None, []

    def pick_name(self, name: str, exclude: set[int] | None = None, group: str | None = None) -> T | None:
        key, tunnels = self.match_name(name, group)
        return self._pick(key, tunnels, exclude) if key is not None else None

    def tunnels_for_port(self, port: int, group: str | None = None) -> list[T]:
        """The tunnels granted `port` for clients of `group`; else those granted all of `group`."""
        return self._port_match(port, group)[1]

    def pick_port(self, port: int, exclude: set[int] | None = None, group: str | None = None) -> T | None:
        return self._pick(*self._port_match(port, group), exclude)

    def _port_match(self, port: int, group: str | None) -> tuple[str | int, list[T]]:
        tunnels = self._of_group(self._keys.get(port, []), group)
        if not tunnels and group is not None and (wide := self._wide.get(group)):
            return wide_key(group), list(wide)
        return port, tunnels

    def wide_groups(self, tunnel: T) -> frozenset[str]:
        """The groups whose every client `tunnel` is granted (for status)."""
        return self._wide_of.get(id(tunnel), frozenset())

    def scoped(self) -> tuple[Grant, dict[str, Grant]]:
        """What the tunnels here serve: (for every listener, {group: for that group's listeners only,
        `wide` = {group} when some tunnel takes every client of it}), the grants peer edges forward by
        (mproxy.edge.forward)."""
        anywhere = Grant()
        groups: dict[str, Grant] = {}
        for tunnel, grant in self._grants.values():
            plain = Grant(grant.domains, grant.ports)
            scope = tunnel.listener_groups
            if scope is None:
                anywhere = anywhere.union(plain)
            wide = self._wide_of.get(id(tunnel), frozenset())
            for group in scope or ():
                mine = Grant(plain.domains, plain.ports, wide=frozenset({group}) & wide)
                groups[group] = groups.get(group, Grant()).union(mine)
        return anywhere, groups

    def _pick(self, key: str | int, tunnels: list[T], exclude: set[int] | None = None) -> T | None:
        """`exclude`: ids of tunnels already tried for this client."""
        live = [t for t in tunnels if t.accepting and not (exclude and id(t) in exclude)]
        if not live:
            return None
        fewest = min(t.active_streams for t in live)
        ties = [t for t in live if t.active_streams == fewest]
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return ties[turn % len(ties)]

    def names(self) -> dict[str, int]:
        """Granted domain -> number of tunnels serving it (for status and metrics)."""
        return {k: len(v) for k, v in self._keys.items() if isinstance(k, str)}

    def ports(self) -> dict[int, int]:
        return {k: len(v) for k, v in self._keys.items() if isinstance(k, int)}

    def __len__(self) -> int:
        return len(self._grants)


def wide_key(group: str) -> str:
    """The round-robin key of a group-wide grant: never a DNS name (`*`), so never a granted domain's."""
    return "*" + group
