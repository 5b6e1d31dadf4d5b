"""Parser events: one class per handler of the reference parser (onconnection, onmessage, ...).

The header strings are kept exactly as on the wire ("" when the header is too short to carry the field),
so a peer can echo `client_id` back byte for byte. `data` is the frame body (b"" when none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mproxy.codec.address import Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields common to every frame; never instantiated itself."""

    kind: ClassVar[str] = ""

    family: str = ""
    address: str = ""
    port: str = ""
    service: str = ""
    serviceport: str = ""
    name: str = ""
    data: bytes = b""

    @property
    def client_id(self) -> str:
        return f"{self.family},{self.address},{self.port}"

    @property
    def addr(self) -> Address:
        return Address(self.family, self.address, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection(Event):
    """A new client stream. `service` is header field 8 (the stream's service), as the reference reports it;
    `servicename` is the same field under its own name (field 5 is "connection")."""

    kind: ClassVar[str] = "connection"

    servicename: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(Event):
    """Client payload: `data` is the bytes to deliver."""

    kind: ClassVar[str] = "message"


@dataclass(frozen=True, slots=True, kw_only=True)
class Control(Event):
    """A control-channel message: `value` is the parsed JSON body, or None when the body is not JSON."""

    kind: ClassVar[str] = "control"

    value: object = None


@dataclass(frozen=True, slots=True, kw_only=True)
class End(Event):
    """The far side closed this client stream. Legacy peers pad the body with one space; ignore it."""

    kind: ClassVar[str] = "end"


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Event):
    """The far side's socket for this client failed. `message`/`code` come from the JSON body
    `{"message": ..., "code": ...}`; a body that is not a JSON object gives its text and E_UNKNOWN_ERR."""

    kind: ClassVar[str] = "error"

    message: str = ""
    code: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause(Event):
    """Stop sending this client's data (flow control); the body, if any, is a decimal byte count."""

    kind: ClassVar[str] = "pause"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(Event):
    """Start sending this client's data again; the body, if any, is a decimal byte count."""

    kind: ClassVar[str] = "resume"


EVENT_TYPES: tuple[type[Event], ...] = (Connection, Message, Control, End, Error, Pause, Resume)
