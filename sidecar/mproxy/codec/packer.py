"""The M-PROXY v1 packer: header bytes that match the reference (proxy-packer 2.0.4) byte for byte.

Frame = 0xFE, one byte header length, ASCII header, body. Unlike the reference, a field with a comma or
a non-ASCII character, or a header over 255 bytes, is refused (LocalProtocolError): the reference would
silently write a frame that desynchronises the tunnel. So is a port or serviceport that is not canonical
decimal 0-65535 (`038983`, `+443`, ` 80`): our parser refuses those, so we never send them either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mproxy.codec.address import Address, port_ok
from mproxy.codec.errors import LocalProtocolError
from mproxy.codec.events import Connection, Control, End, Error, Event, Message, Pause, Resume
from mproxy.codec.jsjson import js_json_bytes

VERSION_BYTE = 0xFE  # 255 - version 1
MAX_HEADER = 255
_VERSION = bytes([VERSION_BYTE])
_PAD = b" "  # what the reference's legacy `pack` sends instead of an empty body

_NAMES_7 = ("family", "address", "port", "datalen", "service", "serviceport", "name")
_NAMES_8 = (*_NAMES_7, "servicename")
_NAMES_CONTROL = ("family", "address", "port", "datalen", "service")


def _fail(fields: Sequence[str], names: Sequence[str], header: str) -> LocalProtocolError:
    """Name the first offending field (only called once a fast check has failed)."""
    for name, value in zip(names, fields, strict=False):
        if "," in value:
            return LocalProtocolError(
                f"field {name}={value!r} contains a comma, which would split the header; remove it"
            )
        if not value.isascii():
            return LocalProtocolError(f"field {name}={value!r} is not ASCII; M-PROXY v1 headers are ASCII")
    return LocalProtocolError(
        f"header is {len(header)} bytes, over the {MAX_HEADER}-byte limit of M-PROXY v1 "
        f"(the reference would wrap the length byte and desynchronise the tunnel); shorten the name "
        f"or address: {header[:80]!r}..."
    )


def pack_raw_header(fields: Sequence[str], names: Sequence[str] = _NAMES_8) -> bytes:
    """Header bytes (version, length, ASCII fields joined by commas) from already-formatted fields."""
    header = ",".join(fields)
    if header.count(",") != len(fields) - 1 or not header.isascii() or len(header) > MAX_HEADER:
        raise _fail(fields, names, header)
    if not header:
        raise LocalProtocolError("header is empty; M-PROXY v1 needs at least family,address,port,datalen")
    return _VERSION + bytes((len(header),)) + header.encode("ascii")


def _datalen(datalen: int) -> str:
    if datalen < 0:
        raise LocalProtocolError(f"datalen {datalen} is negative")
    return str(datalen)


def _check_port(what: str, value: str) -> None:
    if value and not port_ok(value):
        raise LocalProtocolError(f"field {what}={value[:16]!r} is not a port number in canonical decimal "
                                 "(0-65535, no sign, spaces or leading zeros); the peer would refuse it")


def pack_header(
    addr: Address | None,
    service: str,
    datalen: int,
    *,
    serviceport: str | int = "",
    name: str = "",
    servicename: str = "",
) -> bytes:
    """Header bytes only (the reference's packHeader); send the `datalen` body bytes after it.

    service "control" gives `,,,<n>,control` (addr ignored); "connection" gives the 8-field connection
    header with `servicename` as field 8; anything else the 7-field data/end/error/pause/resume header.
    """
    if service == "control":
        return pack_raw_header(("", "", "", _datalen(datalen), "control"), _NAMES_CONTROL)
    if addr is None:
        raise LocalProtocolError(f"a {service!r} frame needs the client address (addr is None)")
    sp = str(serviceport)
    _check_port("port", addr.port)
    _check_port("serviceport", sp)
    if service == "connection":
        fields: tuple[str, ...] = (
            addr.family, addr.address, addr.port, _datalen(datalen), "connection", sp, name, servicename
        )
        return pack_raw_header(fields, _NAMES_8)
    fields = (addr.family, addr.address, addr.port, _datalen(datalen), service, sp, name)
    return pack_raw_header(fields, _NAMES_7)


def pack(
    addr: Address | None,
    body: bytes,
    service: str,
    *,
    serviceport: str | int = "",
    name: str = "",
    servicename: str = "",
    legacy_pad: bool = True,
) -> bytes:
    """Header + body (the reference's `pack`: an empty body is sent as one space when legacy_pad)."""
    if legacy_pad and not body:
        body = _PAD
    head = pack_header(addr, service, len(body), serviceport=serviceport, name=name, servicename=servicename)
    return head + bytes(body)


def pack_connection(addr: Address, *, service: str, serviceport: str | int = "", name: str = "") -> bytes:
    """A new client stream (header only), as the relay sends it: `service` goes into field 8."""
    return pack_header(addr, "connection", 0, serviceport=serviceport, name=name, servicename=service)


def pack_data_header(
    addr: Address, datalen: int, *, service: str, serviceport: str | int = "", name: str = ""
) -> bytes:
    """Header of a data frame; write the `datalen` payload bytes right after it (no copy)."""
    return pack_header(addr, service, datalen, serviceport=serviceport, name=name)


def pack_data(
    addr: Address, data: bytes, *, service: str, serviceport: str | int = "", name: str = ""
) -> bytes:
    """A complete data frame (header + payload)."""
    return pack_header(addr, service, len(data), serviceport=serviceport, name=name) + bytes(data)


def data_header_packer(
    addr: Address, *, service: str, serviceport: str | int = "", name: str = ""
) -> Callable[[int], bytes]:
    """A function `datalen -> header bytes` for one stream's data frames, equal to
    `pack_data_header(addr, datalen, ...)` but validated once and ~4x cheaper per frame (hot path)."""
    prefix_s = f"{addr.family},{addr.address},{addr.port},"
    suffix_s = f",{service},{serviceport},{name}"
    pack_header(addr, service, 0, serviceport=serviceport, name=name)  # validate the fields once
    prefix, suffix = prefix_s.encode("ascii"), suffix_s.encode("ascii")
    fixed = len(prefix) + len(suffix)
    room = MAX_HEADER - fixed

    def header(datalen: int) -> bytes:
        digits = b"%d" % datalen
        if len(digits) > room or datalen < 0:
            # Only a negative or absurdly long datalen gets here; let pack_header name the problem.
            return pack_header(addr, service, datalen, serviceport=serviceport, name=name)
        return b"\xfe%c%s%s%s" % (fixed + len(digits), prefix, digits, suffix)

    return header


def pack_checked_header(addr: Address, service: str, datalen: int, serviceport: str, name: str) -> bytes:
    """`pack_header(addr, service, datalen, serviceport=serviceport, name=name)` without its checks, ~6x
    cheaper: for the frames of a stream whose fields were checked once when it opened (the multiplexer's
    hot path). A header over 255 bytes still raises (OverflowError), and a non-ASCII one (UnicodeError)."""
    a = addr
    text = f"{a.family},{a.address},{a.port},{datalen},{service},{serviceport},{name}".encode("ascii")
    return b"\xfe%c%s" % (len(text), text)


def header_room(addr: Address, serviceport: str, name: str) -> int:
    """Bytes left for the service and datalen fields of a 7-field header with these fields (<0: none)."""
    fixed = len(addr.family) + len(addr.address) + len(addr.port) + len(serviceport) + len(name)
    return MAX_HEADER - 6 - fixed


def pack_end(addr: Address, *, serviceport: str | int = "", name: str = "") -> bytes:
    """The stream is closed (header only, as packHeader(addr, null, 'end'))."""
    return pack_header(addr, "end", 0, serviceport=serviceport, name=name)


def _with_body(addr: Address, service: str, body: bytes, serviceport: str | int, name: str) -> bytes:
    return pack_header(addr, service, len(body), serviceport=serviceport, name=name) + body


def pack_error(
    addr: Address, message: str, code: str, *, serviceport: str | int = "", name: str = ""
) -> bytes:
    """The stream failed: body `{"message":...,"code":...}` as packHeader(addr, {message, code}, 'error')."""
    return _with_body(addr, "error", js_json_bytes({"message": message, "code": code}), serviceport, name)


def _count_body(count: int) -> bytes:
    # Always a body, "0" included: telebit 0.20's device logs `opts.data.toString()` on pause/resume and
    # dies (TypeError) on a frame without one. (The reference's packHeader would drop a 0 body.)
    if count < 0:
        raise LocalProtocolError(f"pause/resume count {count} is negative")
    return b"%d" % count


def pack_pause(addr: Address, count: int = 0, *, serviceport: str | int = "", name: str = "") -> bytes:
    """Ask the peer to stop sending this client's data. The body is a decimal byte count, informational
    (telebit sends the bytes it has read for the client so far); it is never empty."""
    return _with_body(addr, "pause", _count_body(count), serviceport, name)


def pack_resume(addr: Address, count: int = 0, *, serviceport: str | int = "", name: str = "") -> bytes:
    """Ask the peer to send this client's data again (body as for pause: a decimal count, never empty)."""
    return _with_body(addr, "resume", _count_body(count), serviceport, name)


def _js_falsy(value: object) -> bool:
    return value is None or value is False or value == "" or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    )


def pack_control(value: object) -> bytes:
    """A control message: `,,,<n>,control` + JSON.stringify(value). Like the reference, a falsy value
    (null, false, 0, "") is sent as no body at all; real control messages are arrays."""
    body = b"" if _js_falsy(value) else js_json_bytes(value)
    return pack_header(None, "control", len(body)) + body


# The service names the parser turns into their own event types (any other service is a Message).
_TYPED: dict[type[Event], str] = {End: "end", Error: "error", Pause: "pause", Resume: "resume"}
_RESERVED = frozenset((*_TYPED.values(), "connection", "control"))


def _event_body(event: Event) -> bytes:
    if event.data or not isinstance(event, Error | Control):
        return bytes(event.data)
    # Built by hand with the parsed fields only: encode them as the parser would have read them.
    if isinstance(event, Error):
        return js_json_bytes({"message": event.message, "code": event.code})
    return b"" if _js_falsy(event.value) else js_json_bytes(event.value)


def pack_event(event: Event) -> bytes:
    """The frame the parser reads back as `event` (packing mirrors parsing): for a frame in canonical
    form (7 fields, 8 for a connection; control with empty address fields), pack_event(parse(x)) == x.

    The body is `event.data`; an Error or Control without one gets its message/code or value encoded.
    An event whose class and service disagree (a Message with service "end", an End with service
    "https") is refused: the peer would parse it as another event."""
    body = _event_body(event)
    if isinstance(event, Connection):
        head = pack_header(event.addr, "connection", len(body), serviceport=event.serviceport,
                           name=event.name, servicename=event.servicename)
    elif isinstance(event, Control):
        head = pack_header(None, "control", len(body))
    else:
        typed = _TYPED.get(type(event))
        if typed is None:
            ok, service = type(event) is Message and event.service not in _RESERVED, event.service
        else:
            ok, service = event.service in ("", typed), typed
        if not ok:
            raise LocalProtocolError(f"a {type(event).__name__} event with service {event.service!r} would "
                                     "be read back as another event; use the event class of that service")
        head = pack_header(event.addr, service, len(body), serviceport=event.serviceport, name=event.name)
    return head + body
