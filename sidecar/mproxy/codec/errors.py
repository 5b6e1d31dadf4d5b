"""Codec errors, split by whose fault they are (the h11 / h2 model).

`LocalProtocolError`: the caller asked to pack something the wire cannot carry; fix the caller.
`RemoteProtocolError`: the peer sent bytes that are not M-PROXY v1; the tunnel that carried them must be
closed, because framing is lost from that byte on.
"""

from __future__ import annotations

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
