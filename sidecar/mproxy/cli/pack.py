"""`mproxy pack INPUT.json OUTPUT.bin`: write one frame, byte-identical to proxy-packer's test/pack.js.

INPUT.json: {"version": 1, "address": {"family", "address", "port", "service", "serviceport", "name"},
"filepath": "payload.bin"} (filepath relative to INPUT.json). As in test/pack.js, `name` is taken from
the payload's TLS SNI or HTTP Host. Extension: "kind" (connection, control, end, error, pause, resume)
packs `Packer.pack(address, body, kind)` with the given name; "json" gives the body as a JSON value
instead of a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mproxy.cli._common import add_documented, binary_file


def register(subparsers: Any) -> None:
    parser = add_documented(
        subparsers, "pack", "pack one M-PROXY frame from a JSON description (as proxy-packer's test/pack.js)",
        __doc__,
    )
    parser.add_argument("input", metavar="INPUT.json", help="frame description (test/pack.js format)")
    parser.add_argument("output", metavar="OUTPUT.bin", help="where to write the frame ('-' for stdout)")
    parser.set_defaults(run=_run)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _build(path: str) -> bytes:
    import json
    from pathlib import Path

    from mproxy.codec.refcompat import pack_js

    src = Path(path)
    spec = json.loads(src.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    if not isinstance(spec, dict):
        raise ValueError("the input must be a JSON object like test/pack.js's input.json")
    if spec.get("version", 1) != 1:
        raise ValueError(f"version {spec['version']!r} is not supported; only M-PROXY version 1 exists")
    address = spec.get("address")
    if address is not None and not isinstance(address, dict):
        raise ValueError('"address" must be an object: family, address, port, service, serviceport, name')
    kind = spec.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ValueError(f"\"kind\" must be a string, got {kind!r}")
    if "json" in spec:
        if "filepath" in spec:
            raise ValueError("give either \"filepath\" or \"json\" as the body, not both")
        return pack_js(address, spec["json"], kind, body_is_json=True)
    filepath = spec.get("filepath")
    if filepath is None and kind is not None:
        return pack_js(address, None, kind, body_is_json=True)  # Packer.pack(address, null, kind)
    if not isinstance(filepath, str):
        raise ValueError('the input has no "filepath" (payload file, relative to the JSON file) or "json"')
    body = (src.parent / filepath).read_bytes()
    return pack_js(address, body, kind, body_is_json=False)


def _run(args: argparse.Namespace) -> int:
    from mproxy.codec.errors import ProtocolError

    try:
        frame = _build(args.input)
        with binary_file(args.output, "wb") as out:
            out.write(frame)
    except (OSError, ValueError, ProtocolError) as err:
        print(f"mproxy pack: {err}", file=sys.stderr)
        return 1
    if args.output != "-":
        print(f"wrote {len(frame)} bytes to '{args.output}'", file=sys.stderr)
    return 0
