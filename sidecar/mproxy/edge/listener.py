"""Public listeners: bind a port and make one `EdgeClient` (mproxy.edge.client) per accepted socket.

The client does everything from there (PROXY header, admission, sniffing, routing, relaying); the
listener holds what its clients share (`Front`) and, on close, ends the ones still in their preamble.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from mproxy.config.edge import ListenerConfig
from mproxy.edge.client import EdgeClient, Front, Router
from mproxy.edge.limits import ClientLimiter, PendingClients

__all__ = ["Network", "PublicListener"]

log = logging.getLogger("mproxy.edge")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PublicListener:
    def __init__(
        self,
        config: ListenerConfig,
        *,
        router: Router,
        limiter: ClientLimiter,
        trusted: tuple[Network, ...] = (),
        sniff_timeout: float = 10.0,
        pending: PendingClients | None = None,
        backlog: int = 4096,
    ) -> None:
        self.config = config
        self._trusted = trusted
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self.port = 0  # the bound port, once started
        self.front = Front(
            kind=config.kind, service=config.service, public_port=config.public_port or 0,
            proxy_protocol=config.proxy_protocol, trusted=self._is_trusted, sniff_timeout=sniff_timeout,
            limiter=limiter, pending=pending if pending is not None else PendingClients(1_000_000),
            router=router, unrouted=set(), tls_alert=config.tls_refusal == "alert", group=config.group,
        )

    @property
    def public_port(self) -> int:
        return self.config.public_port or self.port

    async def start(self) -> None:
        host, port = self.config.host_port
        front = self.front
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: EdgeClient(front), host, port, backlog=self._backlog)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for {self.config.kind} clients: "
                          f"{exc.strerror}; pick another port in listeners[].listen") from None
        self.port = self._server.sockets[0].getsockname()[1]
        front.public_port = self.public_port

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for client in list(self.front.unrouted):
            client.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _is_trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._trusted)
