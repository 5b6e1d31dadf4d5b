"""Read the routing name from a client's first bytes: TLS SNI from a ClientHello, Host from an HTTP head.

Each sniffer answers one of: the lowercased name, without the trailing dot of an absolute name
(`example.com.` is `example.com`); None ("not TLS / not HTTP / no usable name", route by
port or reject); NEED_MORE ("could still be, send more bytes"). Past MAX_SNIFF_BYTES nothing more is
awaited, so a slow or hostile client cannot make the edge buffer without bound.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

MAX_SNIFF_BYTES = 32 * 1024
_MAX_RECORD = 16384 + 2048


class _NeedMore(enum.Enum):
    NEED_MORE = "need more bytes"


NEED_MORE: Literal[_NeedMore.NEED_MORE] = _NeedMore.NEED_MORE
SniffResult = str | None | Literal[_NeedMore.NEED_MORE]


def _usable(name: bytes) -> str | None:
    """A name that can go into an M-PROXY header: printable ASCII, no comma, no space; one trailing dot
    (a fully qualified name) is dropped, so `example.com.` routes as `example.com`."""
    if name.endswith(b"."):
        name = name[:-1]
    if not name or name.endswith(b".") or len(name) > 253 or not name.isascii():
        return None
    if any(b <= 0x20 or b == 0x7F or b == 0x2C for b in name):
        return None
    return name.decode("ascii").lower()


def _more(n: int) -> SniffResult:
    return NEED_MORE if n < MAX_SNIFF_BYTES else None


def sniff_sni(data: bytes | bytearray | memoryview) -> SniffResult:
    """The server_name of a TLS ClientHello (reassembled across records), lowercased."""
    buf = bytes(data[:MAX_SNIFF_BYTES])
    n = len(buf)
    if n == 0:
        return NEED_MORE
    if buf[0] != 0x16:  # handshake record
        return None
    if n >= 2 and buf[1] != 0x03:  # SSL 3.0 / TLS 1.x record version
        return None
    hs = b""
    pos = 0
    while True:
        if pos + 5 > n:
            return _more(n)
        if buf[pos] != 0x16 or buf[pos + 1] != 0x03:
            return None
        rlen = int.from_bytes(buf[pos + 3:pos + 5], "big")
        if rlen == 0 or rlen > _MAX_RECORD:
            return None
        frag = buf[pos + 5:pos + 5 + rlen]
        hs += frag
        pos += 5 + rlen
        if len(hs) >= 4:
            if hs[0] != 0x01:  # ClientHello
                return None
            hlen = int.from_bytes(hs[1:4], "big")
            if len(hs) >= 4 + hlen:
                return _client_hello_sni(hs[4:4 + hlen])
        if len(frag) < rlen:
            return _more(n)


def _client_hello_sni(body: bytes) -> str | None:
    n = len(body)
    pos = 2 + 32  # client_version, random
    if pos + 1 > n:
        return None
    pos += 1 + body[pos]  # session_id
    if pos + 2 > n:
        return None
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher_suites
    if pos + 1 > n:
        return None
    pos += 1 + body[pos]  # compression_methods
    if pos + 2 > n:
        return None  # no extensions
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 2
    if end > n:
        return None
    while pos + 4 <= end:
        ext_type = int.from_bytes(body[pos:pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2:pos + 4], "big")
        pos += 4
        if pos + ext_len > end:
            return None
        if ext_type == 0:  # server_name
            ext = body[pos:pos + ext_len]
            if len(ext) < 2:
                return None
            list_end = min(2 + int.from_bytes(ext[:2], "big"), len(ext))
            i = 2
            while i + 3 <= list_end:
                name_type, name_len = ext[i], int.from_bytes(ext[i + 1:i + 3], "big")
                i += 3
                if i + name_len > list_end:
                    return None
                if name_type == 0:  # host_name
                    return _usable(ext[i:i + name_len])
                i += name_len
            return None
        pos += ext_len
    return None


_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
_REQUEST_LINE = re.compile(rb"[" + _TCHAR + rb"]{1,32} [^\s]+ HTTP/\d\.\d\r?\n")
_PARTIAL_LINE = re.compile(  # a prefix of a request line: method, target, "HTTP/d.d"
    rb"[" + _TCHAR + rb"]{1,32}(?: [^\s]*(?: (?:H(?:T(?:T(?:P(?:/(?:\d(?:\.\d?)?)?)?)?)?)?)?)?)?"
)
_HOST = re.compile(rb"host:[ \t]*([^\r\n]*)", re.IGNORECASE)
# RFC 9112 5.1: no whitespace between a field name and its colon; a server must answer 400. A backend
# that drops such a line would see no Host at all, so it is refused here, not forwarded.
_HOST_SPACED = re.compile(rb"host[ \t]+:", re.IGNORECASE)


def sniff_http_host(data: bytes | bytearray | memoryview) -> SniffResult:
    """The Host of an HTTP/1.x request head, lowercased, without its port."""
    buf = bytes(data[:MAX_SNIFF_BYTES])
    n = len(buf)
    if n == 0:
        return NEED_MORE
    eol = buf.find(b"\n")
    if eol < 0:
        return _more(n) if _PARTIAL_LINE.fullmatch(buf.rstrip(b"\r")) else None
    if not _REQUEST_LINE.match(buf, 0, eol + 1):
        return None
    pos = eol + 1
    while True:
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return _more(n)
        line = buf[pos:eol].rstrip(b"\r")
        if not line:
            return None  # end of head, no Host
        m = _HOST.fullmatch(line)
        if m:
            return _host_name(m.group(1).strip())
        if _HOST_SPACED.match(line):
            return None
        pos = eol + 1


def _host_name(value: bytes) -> str | None:
    if value.startswith(b"["):
        close = value.find(b"]")
        return _usable(value[1:close]) if close > 0 else None
    return _usable(value.split(b":", 1)[0])
