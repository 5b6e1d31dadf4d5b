"""Token expiry for one tunnel: a tunnel that shows no valid token in time is closed, and its tokens are
dropped as they expire (the grant shrinks with them; the last one gone closes the tunnel).

`TokenGuard(...).run()` is each tunnel's guard task, supervised by the relay (mproxy.tunnel.supervisor):
should it fail it is restarted, the tunnel itself is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mproxy.edge.control import EdgeControl

__all__ = ["EXPIRY_POLL_SECONDS", "TokenGuard"]

log = logging.getLogger("mproxy.edge")

EXPIRY_POLL_SECONDS = 1.0


class TokenGuard:
    def __init__(self, control: EdgeControl, *, name: str, auth_timeout: float,
                 regrant: Callable[[], None], close: Callable[[str], Awaitable[None]],
                 count: Callable[[str], None]) -> None:
        self.control = control
        self.name = name  # "tunnel 3 from 127.0.0.1", for logs
        self.auth_timeout = auth_timeout  # heartbeat.authTimeoutSeconds
        self.regrant = regrant  # the grant changed: update the routing
        self.close = close  # close the tunnel (1008) with this message
        self.count = count  # a tunnel_rejects reason

    async def run(self) -> None:
        await asyncio.sleep(self.auth_timeout)
        if self.control.grant.empty:
            self.count("no_token")
            log.warning("%s sent no valid token within %g s; closing", self.name, self.auth_timeout)
            await self.close("no valid token; send add_token or ?access_token=")
            return
        while True:
            await asyncio.sleep(EXPIRY_POLL_SECONDS)
            if self.control.expire():
                self.regrant()
                if not self.control.has_grant():
                    self.count("expired")
                    await self.close("every token of this tunnel has expired")
                    return
