"""JSON text exactly as node's JSON.stringify writes it, so control and error bodies match the reference.

Python's json module differs in three places that matter on the wire: floats (1.0 is "1" in JavaScript),
object key order (JavaScript puts integer-like keys first, ascending) and lone surrogates (escaped by
JavaScript, unencodable by Python).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from mproxy.codec.errors import LocalProtocolError

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ARRAY_INDEX_MAX = 2**32 - 2


def js_number(x: float | int) -> str:
    """ECMAScript Number::toString (shortest round-trip digits, JavaScript's exponent thresholds)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        x = float(x) if abs(x) >= 2**53 else x
        if isinstance(x, int):
            return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    sign, digit_tuple, exp = Decimal(repr(x)).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exp += len("".join(map(str, digit_tuple))) - len(digits)
    k = len(digits)
    n = exp + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return ("-" if sign else "") + out


def _js_string_literal(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    if _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def _is_array_index(key: str) -> bool:
    return key.isdigit() and key.isascii() and (key == "0" or key[0] != "0") and int(key) <= _ARRAY_INDEX_MAX


def _key_order(obj: dict[str, Any]) -> list[str]:
    keys = list(obj)
    if not any(_is_array_index(k) for k in keys):
        return keys
    indexes = sorted((k for k in keys if _is_array_index(k)), key=int)
    return indexes + [k for k in keys if not _is_array_index(k)]


def js_stringify(value: object, _depth: int = 0) -> str:
    """JSON.stringify(value) for JSON-like Python values (dict with str keys, list, tuple, str, int, float,
    bool, None). NaN and infinities become null, as in JavaScript."""
    if _depth > 500:
        raise LocalProtocolError("JSON body nests deeper than 500 levels; flatten it")
    if value is None or value is True or value is False:
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, str):
        return _js_string_literal(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "null"
        return js_number(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_stringify(v, _depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise LocalProtocolError(f"JSON object key {k!r} is not a string; use string keys")
        return "{" + ",".join(
            _js_string_literal(k) + ":" + js_stringify(value[k], _depth + 1) for k in _key_order(value)
        ) + "}"
    raise LocalProtocolError(f"{type(value).__name__} value {value!r} cannot be sent as JSON")


def js_json_bytes(value: object) -> bytes:
    """The reference's `Buffer.from(JSON.stringify(value))`."""
    return js_stringify(value).encode("utf-8")
