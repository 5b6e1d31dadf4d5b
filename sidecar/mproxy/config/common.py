"""What both schemas (sidecar, edge) share: the HTTP endpoint, logging, and the buffer-rule limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mproxy.config import fields as f
from mproxy.config.errors import ConfigError

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "0.0.0.0:9090"

    @property
    def host_port(self) -> tuple[str, int]:
        return f.split_listen(self.listen, "http.listen")

    def to_dict(self) -> dict[str, Any]:
        return {"listen": self.listen}


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "json"
    level: str = "info"

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "level": self.level}


def read_http(root: Mapping[str, Any]) -> HttpConfig:
    obj = f.mapping(root.get("http"), "http")
    f.only_keys(obj, "http", {"listen"})
    return HttpConfig(f.listen(obj, "listen", "http", "0.0.0.0:9090"))


def read_logging(root: Mapping[str, Any]) -> LoggingConfig:
    obj = f.mapping(root.get("logging"), "logging")
    f.only_keys(obj, "logging", {"format", "level"})
    return LoggingConfig(
        format=f.choice(obj, "format", "logging", "json", LOG_FORMATS),
        level=f.choice(obj, "level", "logging", "info", LOG_LEVELS),
    )


# The E_BUFFER rule's keys (mproxy.buffers) and the IPv6 prefix, the same names, defaults and ranges in
# `limits` of both schemas.
BUFFER_KEYS = frozenset({"bufferSoftBytes", "bufferHardBytes", "bufferGraceSeconds", "tunnelBufferBytes",
                         "ipv6PrefixLength"})


def read_buffer_limits(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The BUFFER_KEYS of a `limits` mapping, checked, as the limits dataclasses' keyword arguments."""
    gib = 1024 * 1024 * 1024
    soft = f.integer(obj, "bufferSoftBytes", "limits", 8 * 1024 * 1024, 65536, 16 * gib)
    hard = f.integer(obj, "bufferHardBytes", "limits", 64 * 1024 * 1024, 65536, 16 * gib)
    if hard < soft:
        raise ConfigError("limits.bufferHardBytes", f"must be at least bufferSoftBytes ({hard} < {soft})")
    tunnel = f.integer(obj, "tunnelBufferBytes", "limits", 256 * 1024 * 1024, 65536, 64 * gib)
    if tunnel < soft:
        raise ConfigError("limits.tunnelBufferBytes", f"must be at least bufferSoftBytes ({tunnel} < {soft})")
    return {
        "buffer_soft_bytes": soft,
        "buffer_hard_bytes": hard,
        "buffer_grace_seconds": f.number(obj, "bufferGraceSeconds", "limits", 2.0, 0.01, 600),
        "tunnel_buffer_bytes": tunnel,
        "ipv6_prefix_length": f.integer(obj, "ipv6PrefixLength", "limits", 64, 1, 128),
    }
