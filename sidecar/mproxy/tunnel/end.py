"""How a stream ended: `StreamEnd`, what `StreamHandler.stream_closed` is given.

| origin | when | `str(end)` |
|---|---|---|
| clean | both sides sent `end` (or we closed quietly after ours) | "" |
| local | we aborted it, `stream.abort(message, code)` (E_IDLE, E_BUFFER, ...) | "CODE: message" |
| peer | the peer sent `error` {code, message} | "peer error CODE: message" |
| tunnel | the tunnel closed under it (`code`, `close_code`: see below) | "tunnel closed: message" |

For origin tunnel, `code` is run_tunnel's close reason (peer_closed, shutdown, dead_peer, ...) and
`close_code` the WebSocket close code sent or received, when there was one.

`str(end)` is the sentence logs have always carried; code that decides something reads the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CLEAN", "Origin", "StreamEnd"]

Origin = Literal["clean", "local", "peer", "tunnel"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    origin: Origin
    code: str = ""  # the M-PROXY error code (local, peer) or run_tunnel's close reason (tunnel)
    close_code: int | None = None  # the WebSocket close code (tunnel)
    message: str = ""

    @property
    def clean(self) -> bool:
        return self.origin == "clean"

    def __str__(self) -> str:
        if self.origin == "local":
            return f"{self.code}: {self.message}"
        if self.origin == "peer":
            return f"peer error {self.code}: {self.message}"
        if self.origin == "tunnel":
            return f"tunnel closed: {self.message}"
        return ""


CLEAN = StreamEnd(origin="clean")
