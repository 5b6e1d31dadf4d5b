"""Codec errors, split by whose fault they are (the h11 / h2 model).

`LocalProtocolError`: the caller asked to pack something the wire cannot carry; fix the caller.
`RemoteProtocolError`: the peer sent bytes that are not M-PROXY v1; the tunnel that carried them must be
closed, because framing is lost from that byte on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ProtocolError(Exception):
    """Base class of every error the codec raises on purpose."""


class LocalProtocolError(ProtocolError):
    """The caller asked to pack something invalid; the message names the field."""


class RemoteProtocolError(ProtocolError):
    """The peer's byte stream is not valid M-PROXY v1.

    `offset` is the absolute stream offset of the faulty byte, `reason` says what is wrong with it, and
    `events` holds the events decoded earlier in the same `Parser.feed` call (so nothing decoded before
    the fault is lost).
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason
        self.events: list[Any] = []


class ControlMessageError(ProtocolError):
    """A control-channel message (JSON) does not have the telebit shape; answer it with E_BAD_COMMAND."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ErrorCode(StrEnum):
    """The error codes mproxy puts on the wire (in `error` frames, control replies and HTTP refusals).

    One list, so a code is spelled once and a reader sees every code a peer can receive. They are strings
    on the wire (StrEnum compares equal to its value), and telebit peers send and expect the same ones.
    A backend's own OS error name (ECONNRESET, ETIMEDOUT, ...) is passed through as-is and is not listed.
    """

    # telebit's control-channel codes
    UNKNOWN_COMMAND = "E_UNKNOWN_COMMAND"
    BAD_COMMAND = "E_BAD_COMMAND"
    TIMEOUT = "E_TIMEOUT"
    CONN_CLOSED = "E_CONN_CLOSED"
    NO_CONN = "E_NO_CONN"
    UNKNOWN_ERR = "E_UNKNOWN_ERR"
    AUTH = "E_AUTH"
    NO_SERVICE = "E_NO_SERVICE"
    # a backend refused the connection (the errno name, as node's net module reports it)
    CONNREFUSED = "ECONNREFUSED"
    # mproxy's stream and tunnel codes
    ABORTED = "E_ABORTED"
    BACKEND = "E_BACKEND"
    BUFFER = "E_BUFFER"
    CLIENT = "E_CLIENT"
    DUPLICATE = "E_DUPLICATE"
    IDLE = "E_IDLE"
    INTERNAL = "E_INTERNAL"
    LIMIT = "E_LIMIT"
    NO_ROUTE = "E_NO_ROUTE"
    SHUTTING_DOWN = "E_SHUTTING_DOWN"
