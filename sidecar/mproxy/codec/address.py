"""Client addresses: the `family,address,port` triple that names one client stream in a tunnel."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from mproxy.codec.errors import LocalProtocolError

# Canonical decimal, as every peer writes numbers: no sign, no spaces, no leading zeros. A lenient reading
# (int("+0443") == 443) would let two spellings name one port, and routing, grants and logs disagree.
CANONICAL = re.compile(r"0|[1-9][0-9]*")


def port_ok(text: str) -> bool:
    """A port field as M-PROXY peers must write it: canonical decimal 0-65535. The parser refuses any
    other spelling and the packer will not write one."""
    return len(text) <= 5 and bool(CANONICAL.fullmatch(text)) and int(text) <= 65535


@dataclass(frozen=True, slots=True)
class Address:
    """A client address, as strings exactly as they appear on the wire ("IPv4", "127.0.0.1", "51234")."""

    family: str
    address: str
    port: str

    @property
    def client_id(self) -> str:
        """The reference's addrToId: the stream key. Peers echo these exact bytes back, so never normalise."""
        return f"{self.family},{self.address},{self.port}"

    @classmethod
    def from_client_id(cls, client_id: str) -> Address:
        parts = client_id.split(",")
        if len(parts) != 3:
            raise LocalProtocolError(
                f"client id {client_id!r} must be 'family,address,port' (3 comma-separated fields), "
                f"got {len(parts)} fields"
            )
        return cls(parts[0], parts[1], parts[2])


@functools.lru_cache(maxsize=4096)
def address_key(address: str, ipv6_prefix: int = 64) -> str:
    """The key a client address is counted under by per-address limits (the edge's admission, each
    tunnel's streams per client): IPv4 as is, IPv6 as its /`ipv6_prefix` network (one host usually holds
    a whole /64, so counting each address would let it bypass every per-address limit)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


def address_from_peername(peername: Any) -> Address:
    """Address of a socket peer, from `socket.getpeername()` or `transport.get_extra_info("peername")`.

    IPv4 peers give (host, port), IPv6 peers (host, port, flowinfo, scope_id). A dual-stack socket reports
    IPv4 clients as "::ffff:a.b.c.d" with family IPv6, as node does.
    """
    if not isinstance(peername, tuple | list) or len(peername) < 2:
        raise LocalProtocolError(
            f"peername {peername!r} is not an IP socket address (expected (host, port, ...)); "
            "M-PROXY can only name TCP clients"
        )
    host, port = peername[0], peername[1]
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        raise LocalProtocolError(f"peername {peername!r} is not an IP socket address (host str, port int)")
    family = "IPv6" if ":" in host else "IPv4"
    return Address(family, host, str(port))
