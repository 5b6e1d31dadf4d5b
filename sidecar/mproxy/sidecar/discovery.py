"""Every address an edge URL's hostname resolves to, and a resolver that dials one chosen address.

`resolve_all(host, port, nameservers)` returns the distinct addresses (A and AAAA) in a stable order: an
IP literal is itself; with `edge.nameservers` the DNS servers named there are asked (dnspython), else the
system resolver (getaddrinfo). A headless Service, or any multi-A name, lists one address per edge replica.

`PinnedResolver` is handed to aiohttp's connector: it answers every lookup with the address the slot
chose, so the URL (Host header, TLS SNI and certificate check) keeps its hostname while the TCP
connection goes to one replica.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = ["MAX_ADDRESSES", "PinnedResolver", "ResolveError", "resolve_all"]

MAX_ADDRESSES = 256  # a hostname with more addresses is cut: the slots per URL are bounded anyway
TIMEOUT = 5.0


class ResolveError(Exception):
    pass


async def resolve_all(host: str, port: int, nameservers: tuple[str, ...] = ()) -> list[str]:
    """Distinct addresses of `host`, sorted; raises ResolveError with a message for the user."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    found = await (_ask(host, nameservers) if nameservers else _system(host, port))
    out = sorted(set(found), key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
    if not out:
        raise ResolveError(f"{host} resolves to no address")
    return out[:MAX_ADDRESSES]


async def _system(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise ResolveError(f"cannot resolve {host}: {exc}") from None
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


async def _ask(host: str, nameservers: tuple[str, ...]) -> list[str]:
    import dns.asyncresolver
    import dns.exception
    import dns.nameserver
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=False)
    servers: list[str | dns.nameserver.Nameserver] = []
    for server in nameservers:
        addr, _, port = server.rpartition(":")
        servers.append(dns.nameserver.Do53Nameserver(addr.strip("[]"), int(port)))
    resolver.nameservers = servers
    resolver.lifetime = TIMEOUT
    out: list[str] = []
    errors: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except dns.exception.DNSException as exc:
            errors.append(str(exc))
            continue
        out.extend(str(r.address) for r in answer)
    if not out and errors:
        raise ResolveError(f"cannot resolve {host} with edge.nameservers {', '.join(nameservers)}: "
                           f"{errors[0]}")
    return out


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
