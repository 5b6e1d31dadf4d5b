"""The telebit control channel grammar (JSON arrays in `control` frames), sans-IO.

- request:            [id > 0, name, *args]      e.g. [7, "add_token", "<jwt>"]
- reply:              [-id, err | null, result?] e.g. [-7, null]
- unsolicited error:  [0, err]
- the relay's hello:  [1, "hello", [1], ["add_token", "delete_token", "auth", "authn", "authz"]]
`err` is normally {"message": ..., "code": ...}; old peers also send a string or {}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mproxy.codec.errors import ControlMessageError, ErrorCode

PROTOCOL_VERSIONS = (1,)
CAPABILITIES = ("add_token", "delete_token", "auth", "authn", "authz")


_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Hello:
    """The relay's greeting: [id, "hello", versions, capabilities]."""

    id: int
    versions: tuple[int, ...]
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Request:
    """A command: [id > 0, name, *args]; answer it with reply(id, ...) or error_reply(id, ...)."""

    id: int
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to our request `id` (the wire carries -id). `error` is None on success."""

    id: int
    error: Any
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Notice:
    """An unsolicited error: [0, err]."""

    error: Any


ControlMessage = Hello | Request | Reply | Notice


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_control(value: object) -> ControlMessage:
    """Classify a decoded control body; ControlMessageError (answer E_BAD_COMMAND) on a bad shape."""
    if not isinstance(value, list) or not value:
        raise ControlMessageError(f"control message must be a non-empty JSON array, got {_brief(value)}")
    mid = value[0]
    if isinstance(mid, float) and mid.is_integer():
        mid = int(mid)
    if not _is_int(mid):
        raise ControlMessageError(f"control message id must be an integer, got {_brief(value[0])}")
    if mid > 0:
        if len(value) < 2 or not isinstance(value[1], str) or not value[1]:
            raise ControlMessageError(f"request {mid} has no command name (expected [id, name, ...args])")
        if value[1] == "hello":
            versions = value[2] if len(value) > 2 else []
            caps = value[3] if len(value) > 3 else []
            if not isinstance(versions, list) or not all(_is_int(v) for v in versions):
                raise ControlMessageError(f"hello versions must be a list of ints, got {_brief(versions)}")
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise ControlMessageError(f"hello capabilities must be a list of strings, got {_brief(caps)}")
            return Hello(mid, tuple(versions), tuple(caps))
        return Request(mid, value[1], tuple(value[2:]))
    if mid < 0:
        if len(value) > 3:
            raise ControlMessageError(f"reply {mid} has {len(value)} elements; expected [-id, err, result?]")
        error = value[1] if len(value) > 1 else None
        if len(value) == 3:
            return Reply(-mid, error, value[2])
        return Reply(-mid, error)
    if len(value) != 2:
        raise ControlMessageError(f"unsolicited error must be [0, err], got {len(value)} elements")
    return Notice(value[1])


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_body(message: str, code: str) -> dict[str, str]:
    """The error object both peers use: {"message": ..., "code": ...}."""
    return {"message": message, "code": code}


def hello_message(capabilities: tuple[str, ...] | list[str] = CAPABILITIES, req_id: int = 1) -> list[Any]:
    """What the relay sends first: [1, "hello", [1], [capabilities...]]."""
    return [req_id, "hello", list(PROTOCOL_VERSIONS), list(capabilities)]


def request(req_id: int, name: str, *args: Any) -> list[Any]:
    if not _is_int(req_id) or req_id <= 0:
        raise ValueError(f"request id must be a positive integer, got {req_id!r}")
    return [req_id, name, *args]


def reply(req_id: int, result: Any = _MISSING) -> list[Any]:
    """A success reply: [-id, null] or [-id, null, result]."""
    return [-abs(req_id), None] if result is _MISSING else [-abs(req_id), None, result]


def error_reply(req_id: int, message: str, code: str) -> list[Any]:
    """A failure reply: [-id, {"message": ..., "code": ...}]."""
    return [-abs(req_id), error_body(message, code)]


def notice(message: str, code: str) -> list[Any]:
    """An unsolicited error: [0, {"message": ..., "code": ...}]."""
    return [0, error_body(message, code)]


def hello_ack(req_id: int = 1) -> list[Any]:
    """The device's answer to hello: [-1, null]."""
    return reply(req_id)


QUOTE_MAX = 64  # characters of peer text quoted back in a reply: a reply never grows with the request


def quoted(text: str, limit: int = QUOTE_MAX) -> str:
    """`text` in single quotes for a reply, cut to `limit` characters ("..." marks a cut)."""
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit - 3]}...'"


def unknown_command(req: Request) -> list[Any]:
    return error_reply(req.id, f"unknown command {quoted(req.name)}", ErrorCode.UNKNOWN_COMMAND)


def bad_command(reason: str) -> list[Any]:
    return notice(f"bad command: {reason}", ErrorCode.BAD_COMMAND)
