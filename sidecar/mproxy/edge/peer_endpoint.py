"""The grants endpoint peers poll: GET /.mproxy/peer/grants on the tunnel listener.

It answers only a request signed with the shared secret within the clock window (mproxy.edge.peer_auth),
with this edge's id, its forward port, whether it drains, and the names and ports its local tunnels grant:
no token, no secret, no client. The answer is signed over the request's timestamp. A refused request gets
401 with a reason and is logged at most once every LOG_EVERY seconds per reason (a scanner cannot flood
the log).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mproxy.codec.errors import ErrorCode
from mproxy.edge.peer_auth import REQUEST_HEADER, SIGNATURE_HEADER, PeerAuthError, PeerKeys
from mproxy.edge.peers import MAX_GRANT_KEYS

log = logging.getLogger("mproxy.edge.peers")

__all__ = ["LogThrottle", "grants_handler"]

LOG_EVERY = 10.0


class LogThrottle:
    """True at most once per `every` seconds per key (bounded by the fixed set of reasons)."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every:
            return False
        self._last[key] = now
        return True


def grants_handler(keys: PeerKeys, export: Callable[[], dict[str, Any]]
                   ) -> Callable[[web.Request], Any]:
    """`export()`: {"id", "forwardPort", "draining", "domains", "ports"} of this edge, right now."""
    throttle = LogThrottle()

    async def handle(request: web.Request) -> web.Response:
        try:
            caller, ts = keys.verify_request(request.headers.get(REQUEST_HEADER), time.time())
        except PeerAuthError as exc:
            if throttle(exc.reason):
                log.warning("grants request from %s refused: %s", request.remote, exc)
            return web.json_response({"error": str(exc), "code": ErrorCode.AUTH}, status=401)
        data = export()
        data["domains"] = data["domains"][:MAX_GRANT_KEYS]
        data["ports"] = data["ports"][: MAX_GRANT_KEYS - len(data["domains"])]
        body = json.dumps(data, separators=(",", ":")).encode()
        log.debug("grants for peer %s: %d names, %d ports", caller, len(data["domains"]), len(data["ports"]))
        return web.Response(body=body, content_type="application/json",
                            headers={SIGNATURE_HEADER: keys.sign_answer(ts, body)})

    return handle
