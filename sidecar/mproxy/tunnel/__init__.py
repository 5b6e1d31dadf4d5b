"""The tunnel: WebSocket transport, handshake, heartbeats, reconnect, and the stream multiplexer.

Start with `mproxy.tunnel.mux` (its docstring explains how a role opens, accepts, reads, writes,
half-closes, errors and flow-controls streams), then `mproxy.tunnel.ws.run_tunnel` (pumps a mux over an
aiohttp WebSocket with keepalive) and `mproxy.tunnel.control.ControlChannel` (telebit control grammar).
"""

from mproxy.tunnel.backoff import Backoff
from mproxy.tunnel.control import CommandError, ControlChannel
from mproxy.tunnel.end import StreamEnd
from mproxy.tunnel.mux import (
    Multiplexer,
    MuxLimits,
    Stream,
    StreamHandler,
    TunnelProtocolError,
)
from mproxy.tunnel.ws import CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, Heartbeat, TunnelClose, run_tunnel

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_ERROR",
    "Backoff",
    "CommandError",
    "ControlChannel",
    "Heartbeat",
    "Multiplexer",
    "MuxLimits",
    "Stream",
    "StreamEnd",
    "StreamHandler",
    "TunnelClose",
    "TunnelProtocolError",
    "run_tunnel",
]
