"""What the reference's own tools do, for `mproxy pack` (byte-identical to proxy-packer's test/pack.js).

test/pack.js names the frame from the payload with the npm `sni` package (which does not even check that
the bytes are TLS) or a Host regex, and formats JSON values the JavaScript way (`[a, b].join(',')`,
`x || ''`). These are quirks to reproduce, not routing logic: the edge uses mproxy.codec.sniff.
"""

from __future__ import annotations

import re
from typing import Any

from mproxy.codec.errors import LocalProtocolError
from mproxy.codec.jsjson import js_json_bytes, js_number
from mproxy.codec.packer import pack_raw_header

KINDS = ("connection", "control", "end", "error", "pause", "resume")
_HOST = re.compile(
    r"(?:^|(?<=[\u2028\u2029])|[\r\n])Host: ([^\r\n]+)", re.IGNORECASE | re.MULTILINE | re.ASCII
)


def js_join_value(v: Any) -> str:
    """How Array.prototype.join writes one element."""
    if v is None:
        return ""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int | float):
        return js_number(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return ",".join(js_join_value(x) for x in v)
    if isinstance(v, dict):
        return "[object Object]"
    raise LocalProtocolError(f"{type(v).__name__} value {v!r} is not a JSON value")


def js_or_empty(v: Any) -> str:
    """`v || ''` then join: JavaScript's falsy values (null, false, 0, "") give ""."""
    if v is None or v is False or v == "":
        return ""
    if isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
        return ""
    return js_join_value(v)


def npm_sni(data: bytes) -> str | None:
    """The npm `sni` 1.0.0 package: the first host_name, decoded as node's 'ascii' (high bit cleared)."""
    end = len(data)
    pos = 5 + 1 + 3 + 2 + 32
    if pos > end - 1:
        return None
    pos += 1 + data[pos]
    if pos > end - 2:
        return None
    pos += 2 + (data[pos] << 8 | data[pos + 1])
    if pos > end - 1:
        return None
    pos += 1 + data[pos]
    if pos > end - 2:
        return None
    ext_len = data[pos] << 8 | data[pos + 1]
    pos += 2
    if pos + ext_len > end:
        return None
    end = pos + ext_len
    while pos <= end - 4:
        ext_type = data[pos] << 8 | data[pos + 1]
        ext_size = data[pos + 2] << 8 | data[pos + 3]
        pos += 4
        if ext_type == 0:
            if pos > end - 2:
                return None
            list_len = data[pos] << 8 | data[pos + 1]
            pos += 2
            n = pos
            pos += list_len
            if pos > end:
                return None
            while n < pos - 3:
                name_type = data[n]
                name_len = data[n + 1] << 8 | data[n + 2]
                n += 3
                if name_type == 0:
                    if n > end - name_len:
                        return None
                    return bytes(b & 0x7F for b in data[n:n + name_len]).decode("ascii")
                n += name_len
        else:
            pos += ext_size
    return None


def regex_host(data: bytes) -> str:
    """test/pack.js's Host: the first `Host: ` line, lowercased, up to the first ':'."""
    m = _HOST.search(data.decode("utf-8", "replace"))
    return (m.group(1).lower() if m else "").split(":")[0]


def pack_js(address: dict[str, Any] | None, body: Any, kind: str | None, *, body_is_json: bool) -> bytes:
    """The bytes the reference writes.

    kind None: test/pack.js (`name` from the payload's SNI or Host, then `Packer.pack(address, data)`).
    kind in KINDS: `Packer.pack(address, body, kind)`; a JSON body is sent as JSON.stringify(body).
    """
    if kind is not None and kind not in KINDS:
        raise LocalProtocolError(f"kind {kind!r} is not one of {', '.join(KINDS)} (omit it for a data frame)")
    if address is None:
        if kind != "control":
            raise LocalProtocolError("the input has no \"address\" object; give family, address and port")
        address = {}
    if body_is_json:
        # Packer.pack: a falsy value is replaced by one space, anything else is JSON.stringify'd.
        data = b" " if js_or_empty(body) == "" and not isinstance(body, list | dict) else js_json_bytes(body)
        if kind is None:
            data = js_json_bytes(body)
    else:
        data = bytes(body)
    if kind is None:
        name = npm_sni(data) or regex_host(data)
        address = {**address, "name": name}
    if not data:
        data = b" "  # legacy pack: an empty body is one space
    size = str(len(data))
    a = address
    if kind == "control":
        fields: tuple[str, ...] = ("", "", "", size, "control")
    elif kind == "connection":
        fields = (
            js_join_value(a.get("family")), js_join_value(a.get("address")), js_join_value(a.get("port")),
            size, "connection", js_or_empty(a.get("serviceport")), js_or_empty(a.get("name")),
            js_or_empty(a.get("service")),
        )
    else:
        service = kind if kind is not None else js_or_empty(a.get("service"))
        fields = (
            js_join_value(a.get("family")), js_join_value(a.get("address")), js_join_value(a.get("port")),
            size, service, js_or_empty(a.get("serviceport")), js_or_empty(a.get("name")),
        )
    return pack_raw_header(fields) + data
