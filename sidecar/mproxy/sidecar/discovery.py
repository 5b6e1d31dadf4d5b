"""Every address an edge URL's hostname resolves to, and a resolver that dials one chosen address.

`resolve_all(host, port, nameservers)` (mproxy.resolve, shared with the edge's peer discovery) returns
the distinct addresses (A and AAAA) in a stable order, asking `edge.nameservers` when set. A headless
Service, or any multi-A name, lists one address per edge replica.

`PinnedResolver` is handed to aiohttp's connector: it answers every lookup with the address the slot
chose, so the URL (Host header, TLS SNI and certificate check) keeps its hostname while the TCP
connection goes to one replica.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from mproxy.resolve import MAX_ADDRESSES, ResolveError, resolve_all

__all__ = ["MAX_ADDRESSES", "PinnedResolver", "ResolveError", "resolve_all"]


class PinnedResolver(AbstractResolver):
    """Resolves every name to `address` when set, else as aiohttp would."""

    def __init__(self) -> None:
        self.address: str | None = None
        self._fallback = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.address
        if address is None:
            return await self._fallback.resolve(host, port, family)
        fam = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        await self._fallback.close()
