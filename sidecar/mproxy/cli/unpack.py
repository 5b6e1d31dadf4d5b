"""`mproxy unpack INPUT.bin` ('-' for stdin): print each M-PROXY message as one JSON line.

Keys: event (connection, message, control, error, end, pause, resume), family, address, port, service,
serviceport, name (header strings as on the wire, "" when absent; a connection's service is header field
8) and data (the body in base64). On malformed input every message before the fault is printed, then one
line on stderr names the byte offset and the reason, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

from mproxy.cli._common import add_documented, binary_file

_CHUNK = 64 * 1024


def register(subparsers: Any) -> None:
    parser = add_documented(subparsers, "unpack", "decode an M-PROXY byte stream into JSON lines", __doc__)
    parser.add_argument("input", metavar="INPUT.bin", help="captured stream ('-' for stdin)")
    parser.add_argument(
        "--max-body", type=int, default=None, metavar="BYTES",
        help="refuse frames whose body is larger (default: 16 MiB)",
    )
    parser.set_defaults(run=_run)


def _line(event: Any) -> str:
    import base64
    import json

    from mproxy.codec.events import Connection, Error

    out: dict[str, Any] = {
        "event": event.kind,
        "family": event.family,
        "address": event.address,
        "port": event.port,
        "service": event.service,
        "serviceport": event.serviceport,
        "name": event.name,
        "data": base64.b64encode(event.data).decode("ascii"),
    }
    if isinstance(event, Connection):
        out["servicename"] = event.servicename
    elif isinstance(event, Error):
        out["message"] = event.message
        out["code"] = event.code
    return json.dumps(out)  # ASCII: safe whatever the terminal's encoding


def _unpack(src: IO[bytes], out: IO[str], max_body: int | None) -> None:
    from mproxy.codec.parser import DEFAULT_MAX_BODY, Parser

    parser = Parser(DEFAULT_MAX_BODY if max_body is None else max_body)
    while chunk := src.read(_CHUNK):
        try:
            events = parser.feed(chunk)
        except Exception as err:
            for event in getattr(err, "events", []):
                out.write(_line(event) + "\n")
            raise
        for event in events:
            out.write(_line(event) + "\n")
    parser.close()


def _run(args: argparse.Namespace) -> int:
    from mproxy.codec.errors import ProtocolError

    if args.max_body is not None and args.max_body < 0:
        print("mproxy unpack: --max-body must be 0 or more bytes", file=sys.stderr)
        return 2
    try:
        with binary_file(args.input, "rb") as src:
            _unpack(src, sys.stdout, args.max_body)
    except ProtocolError as err:
        sys.stdout.flush()
        print(f"mproxy unpack: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"mproxy unpack: cannot read {args.input}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
