"""Every address a hostname resolves to, in a stable order, for whoever dials each replica in turn.

`resolve_all(host, port, nameservers)` returns the distinct addresses (A and AAAA): an IP literal is itself;
with `nameservers` ("HOST:PORT" each) those DNS servers are asked (dnspython), else the system resolver
(getaddrinfo). A headless Service, or any multi-A name, lists one address per replica. The sidecar uses it
to reach every edge (mproxy.sidecar.discovery), the edge to find its peers (mproxy.edge.peers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

__all__ = ["MAX_ADDRESSES", "ResolveError", "resolve_all"]

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
