"""Structured logs: one line per event, JSON or text, tagged with tunnel / client / route when known.

Pass tags as `extra={"tunnel": ..., "client": ..., "route": ...}`. `redact_url()` strips credentials and
query strings (tokens travel there) before a URL is logged or used as a label.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TAGS", "JsonFormatter", "TextFormatter", "redact_url", "setup_logging"]

TAGS = ("tunnel", "client", "route", "edge", "code")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for tag in TAGS:
            value = getattr(record, tag, None)
            if value is not None:
                out[tag] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(f"{t}={getattr(record, t)}" for t in TAGS if getattr(record, t, None) is not None)
        return f"{line} [{tags}]" if tags else line


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def redact_url(url: str) -> str:
    """ws://user:pw@host:1/p?access_token=x -> ws://host:1/p (no credentials, no query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
