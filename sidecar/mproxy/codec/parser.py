"""Incremental M-PROXY v1 parser: bytes in any chunking -> events, in order.

Sans-IO: `Parser.feed(chunk)` returns the events completed by that chunk. Hot-path design:
- frames wholly inside a chunk are cut out with slicing (one memcpy per body, none when a chunk is
  exactly one body, as the relay sends it);
- parsed headers are cached by their raw bytes (a stream repeats the same few headers), so a data frame
  costs a dict lookup, two slices and one event;
- memory is bounded: at most one partial header (<= 257 bytes) and one body (<= max_body) are held.

Stricter than the reference, which logs and carries on: a bad version byte, a zero header length, a
non-ASCII header, a missing, non-numeric or negative datalen, a number that is not canonical decimal in
the fields that frame and route (datalen; port and serviceport when present: `038983`, `+38983`, ` 80`)
and a body over `max_body` raise RemoteProtocolError naming the absolute byte offset. After that the
parser is dead (framing is lost).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn, cast

from mproxy.codec.address import CANONICAL, port_ok
from mproxy.codec.errors import ErrorCode, RemoteProtocolError
from mproxy.codec.events import Connection, Control, End, Error, Event, Message, Pause, Resume

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_CACHE_LIMIT = 512

# A parsed header: (make_event(body) -> Event, datalen).
_Header = tuple[Callable[[bytes], Event], int]



def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _control_value(body: bytes) -> object:
    """JSON.parse(body.toString()) as node does it: UTF-8 with replacement, no NaN/Infinity."""
    try:
        return json.loads(body.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _error_fields(body: bytes) -> tuple[str, str]:
    """message and code of an error body; the reference uses E_UNKNOWN_ERR when it is not JSON."""
    value = _control_value(body)
    if isinstance(value, dict):
        message, code = value.get("message", ""), value.get("code", "")
        return (
            message if isinstance(message, str) else json.dumps(message),
            code if isinstance(code, str) else json.dumps(code),
        )
    return body.decode("utf-8", "replace"), ErrorCode.UNKNOWN_ERR


def _slot_setter(name: str) -> Callable[[object, object], None]:
    setter: Callable[[object, object], None] = cast(Any, vars(Event)[name]).__set__
    return setter


# Filling the slots directly is ~3x faster than the frozen dataclass __init__ (one object.__setattr__
# per field through keyword arguments); it matters at one event per data frame.
_SET = tuple(_slot_setter(f) for f in ("family", "address", "port", "service", "serviceport", "name", "data"))


def _set_data_bytes(event: object, data: object) -> None:
    _SET[6](event, bytes(cast(bytes, data)))


def _factory(fields: list[str]) -> Callable[[bytes], Event]:
    """A function building the event of this header around a body (dispatch as the reference does)."""
    family, address, port, _, service, serviceport, name, servicename = fields[:8]
    # Only Message bodies may be memoryviews (Parser(zero_copy=True)); the others are decoded, so bytes.
    if service == "connection":
        return lambda data: Connection(
            family=family, address=address, port=port, service=servicename, serviceport=serviceport,
            name=name, data=bytes(data), servicename=servicename,
        )
    if service == "control":
        return lambda data: Control(
            family=family, address=address, port=port, service=service, serviceport=serviceport,
            name=name, data=bytes(data), value=_control_value(bytes(data)),
        )
    if service == "error":

        def make_error(data: bytes) -> Event:
            data = bytes(data)
            message, code = _error_fields(data)
            return Error(
                family=family, address=address, port=port, service=service, serviceport=serviceport,
                name=name, data=data, message=message, code=code,
            )

        return make_error
    cls: type[Event] = {"end": End, "pause": Pause, "resume": Resume}.get(service, Message)
    set_family, set_address, set_port, set_service, set_serviceport, set_name, set_data = _SET
    if cls is not Message:
        set_data = _set_data_bytes
    new = object.__new__

    def make(data: bytes) -> Event:
        event: Event = new(cls)
        set_family(event, family)
        set_address(event, address)
        set_port(event, port)
        set_service(event, service)
        set_serviceport(event, serviceport)
        set_name(event, name)
        set_data(event, data)
        return event

    return make


class Parser:
    """Turns a byte stream into events. Not thread-safe; one per tunnel direction.

    zero_copy=True: a Message body that lies inside a larger chunk is returned as a read-only memoryview
    of that chunk instead of a bytes copy (it keeps the chunk alive). Like `bytes` annotations always
    meant to mypy before PEP 688, `Message.data` is then bytes-like: give it to transport.write(),
    socket.send(), WebSocket send_bytes(), len(), slicing or bytes(); not to bytes-only methods such as
    .decode(). Bodies that arrive as their own chunk are that chunk (bytes) in both modes.
    """

    __slots__ = (
        "_cache", "_dead", "_head", "_head_at", "_last", "_last_raw", "_make", "_need", "_parts",
        "_zero_copy", "max_body", "offset",
    )

    def __init__(self, max_body: int = DEFAULT_MAX_BODY, *, zero_copy: bool = False) -> None:
        self.max_body = max_body
        self._zero_copy = zero_copy
        self.offset = 0  # bytes consumed so far (absolute offset of the next byte)
        self._cache: dict[bytes, _Header] = {}
        self._last_raw = b""  # the previous header: a stream mostly repeats it, startswith() is cheapest
        self._last: _Header | None = None
        self._dead: RemoteProtocolError | None = None
        self._head = b""  # partial header (version byte onwards) carried to the next chunk
        self._head_at = 0  # absolute offset of _head[0]
        self._need = 0  # body bytes still missing
        self._parts: list[bytes | memoryview] = []  # body received so far (views: copied once, by join)
        self._make: Callable[[bytes], Event] | None = None  # event factory of the pending body

    @property
    def at_boundary(self) -> bool:
        """True when no frame is half received (a clean place for the stream to end)."""
        return not self._head and self._make is None

    def close(self) -> None:
        """Declare end of stream: raises RemoteProtocolError when it ends inside a frame."""
        if self._dead is not None:
            raise self._dead
        if self._head:
            self._die(self._head_at, f"stream ended inside a frame header ({len(self._head)} bytes received)")
        if self._make is not None:
            got = sum(map(len, self._parts))
            self._die(self.offset, f"stream ended inside a frame body ({self._need} of {got + self._need} "
                                   "body bytes missing)")

    def _die(self, offset: int, reason: str, events: list[Event] | None = None) -> NoReturn:
        err = RemoteProtocolError(offset, reason)
        if events:
            err.events = events
        self._dead = err
        raise err

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Event]:
        """Consume `chunk`; return the events it completes, in stream order.

        Raises RemoteProtocolError (with `.events` = the events decoded before the fault in this chunk).
        """
        if self._dead is not None:
            raise self._dead
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        n = len(chunk)
        base = self.offset
        self.offset = base + n
        make = self._make
        if make is not None:
            if self._need == n and not self._parts:
                # The relay's pattern: the header came alone, this chunk is exactly the body. No copy.
                self._make = None
                self._need = 0
                return [make(chunk)]
        elif (
            n > 2 and chunk[1] == n - 2 and chunk[0] == 0xFE and chunk.endswith(self._last_raw)
            and n - 2 == len(self._last_raw) and self._last is not None and not self._head
        ):
            # The relay's pattern again: this chunk is exactly the previous header, alone.
            make, datalen = self._last
            if datalen:
                self._make = make
                self._need = datalen
                return []
            return [make(b"")]
        events: list[Event] = []
        if not n:
            return events
        pos = 0
        if make is not None:
            pos = self._continue_body(chunk, n, events)
            if pos == n:
                return events
        elif self._head:
            pos = self._continue_head(chunk, n, events, base)
        append = events.append
        # Bodies are cut from `src`: the chunk itself (bytes slices copy) or a view of it (no copy).
        src: bytes = cast(bytes, memoryview(chunk)) if self._zero_copy else chunk
        last_raw = self._last_raw
        last_len = len(last_raw)
        last = self._last
        # Fast loop: frames that start in this chunk.
        while pos < n:
            if chunk[pos] != 0xFE:
                self._bad_version(chunk[pos], base + pos, events)
            if pos + 1 == n:
                self._head, self._head_at = chunk[pos:], base + pos
                break
            hlen = chunk[pos + 1]
            hend = pos + 2 + hlen
            if hlen == last_len and chunk.startswith(last_raw, pos + 2) and last is not None:
                make, datalen = last
            else:
                if not hlen:
                    self._die(base + pos + 1, "header length 0 is invalid (a header holds at least "
                                              "family,address,port,datalen)", events)
                if hend > n:
                    self._head, self._head_at = chunk[pos:], base + pos
                    break
                last_raw = chunk[pos + 2:hend]
                last_len = hlen
                last = self._cache.get(last_raw)
                if last is None:
                    last = self._parse_header(last_raw, base + pos + 2, events)
                make, datalen = last
            end = hend + datalen
            if end <= n:
                append(make(src[hend:end]))
                pos = end
            else:
                self._make = make
                self._need = end - n
                if hend < n:
                    self._parts.append(_tail(chunk, hend, n))
                break
        self._last_raw = last_raw
        self._last = last
        return events

    def _finish_body(self, events: list[Event]) -> None:
        parts = self._parts
        first = parts[0]
        body = first if len(parts) == 1 and type(first) is bytes else b"".join(parts)
        make = self._make
        assert make is not None
        self._parts = []
        self._make = None
        events.append(make(body))

    def _continue_body(self, chunk: bytes, n: int, events: list[Event]) -> int:
        need = self._need
        if need >= n:
            self._parts.append(chunk)  # the whole chunk is body: keep it, no copy
            self._need = need - n
            if need > n:
                return n
            self._finish_body(events)
            return n
        self._parts.append(memoryview(chunk)[:need])
        self._need = 0
        self._finish_body(events)
        return need

    def _continue_head(self, chunk: bytes, n: int, events: list[Event], base: int) -> int:
        head = self._head
        pos = 0
        if len(head) == 1:
            head += chunk[:1]
            pos = 1
            if head[1] == 0:
                self._die(base, "header length 0 is invalid (a header holds at least "
                                "family,address,port,datalen)", events)
        missing = 2 + head[1] - len(head)
        if missing > n - pos:
            self._head = head + chunk[pos:]
            return n
        head += chunk[pos:pos + missing]
        pos += missing
        self._head = b""
        raw = head[2:]
        header = self._cache.get(raw)
        if header is None:
            header = self._parse_header(raw, self._head_at + 2, events)
        make, datalen = header
        if datalen <= n - pos:
            events.append(make(chunk[pos:pos + datalen]))
            return pos + datalen
        self._make = make
        self._need = datalen - (n - pos)
        if pos < n:
            self._parts.append(_tail(chunk, pos, n))
        return n

    def _bad_version(self, byte: int, offset: int, events: list[Event]) -> NoReturn:
        self._die(offset, f"version byte 0x{byte:02x} is not 0xfe (M-PROXY v1); the stream is not "
                          "M-PROXY or lost its framing", events)

    def _check_port(self, fields: list[str], i: int, what: str, at: int, events: list[Event]) -> None:
        """A port field, when present, must be a canonical decimal 0-65535."""
        if i >= len(fields) or not fields[i] or port_ok(fields[i]):
            return
        offset = at + sum(len(f) + 1 for f in fields[:i])
        self._die(offset, f"{what} {fields[i][:16]!r} is not a port number in canonical decimal (0-65535, no "
                          "sign, spaces or leading zeros)", events)

    def _parse_header(self, raw: bytes, at: int, events: list[Event]) -> _Header:
        """Validate and decode one header (`at` = absolute offset of its first byte); cache the result."""
        if not raw.isascii():
            bad = next(i for i, b in enumerate(raw) if b > 0x7F)
            self._die(at + bad, f"header byte 0x{raw[bad]:02x} is not ASCII", events)
        fields = raw.decode("ascii").split(",")
        if len(fields) < 4:
            self._die(at, f"header {_show(raw)} has {len(fields)} fields; at least 4 "
                          "(family,address,port,datalen) are required", events)
        text = fields[3]
        text_at = at + len(fields[0]) + len(fields[1]) + len(fields[2]) + 3
        if not text.isdigit():
            what = "empty" if not text else ("negative" if text.startswith("-") else "not a decimal number")
            self._die(text_at, f"datalen {text!r} is {what}", events)
        if not CANONICAL.fullmatch(text):
            self._die(text_at, f"datalen {text!r} is not canonical decimal (no leading zeros)", events)
        datalen = int(text)
        if datalen > self.max_body:
            self._die(text_at, f"datalen {datalen} is over the {self.max_body}-byte body limit", events)
        self._check_port(fields, 2, "port", at, events)
        self._check_port(fields, 5, "serviceport", at, events)
        if len(fields) < 8:
            fields += [""] * (8 - len(fields))
        header = (_factory(fields), datalen)
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[raw] = header
        return header


def _tail(chunk: bytes, start: int, n: int) -> bytes | memoryview:
    """The start of a body that continues in later chunks. A view avoids a copy (the body is copied once,
    when joined), but keeps the whole chunk alive: only take one when it covers most of the chunk, so
    what is held stays within twice the body."""
    return memoryview(chunk)[start:] if 2 * (n - start) >= n else chunk[start:]


def _show(raw: bytes) -> str:
    return repr(raw[:80].decode("ascii", "replace"))


def parse_all(data: bytes | bytearray | memoryview, max_body: int = DEFAULT_MAX_BODY) -> list[Event]:
    """Parse a complete stream; raises RemoteProtocolError if it is malformed or ends inside a frame."""
    parser = Parser(max_body)
    events = parser.feed(data)
    parser.close()
    return events


