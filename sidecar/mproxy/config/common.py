"""What both schemas (sidecar, edge) share: the HTTP endpoint, logging, the buffer-rule limits and the
heartbeat rule."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mproxy.config import fields as f
from mproxy.config import schema as s
from mproxy.config.errors import ConfigError

# Listener groups (docs/edge.md, "Listener groups"): an edge listener's `group`, a sidecar's
# `edge.listenerGroups`, a token's `listenerGroups` claim and the upgrade header that carries the request.
LISTENER_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_LISTENER_GROUPS = 64  # asked for by one tunnel, or allowed by one token
GROUP_HINT = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class HttpConfig(s.Section):
    listen: str = s.listen("0.0.0.0:9090")

    @property
    def host_port(self) -> tuple[str, int]:
        return f.split_listen(self.listen, "http.listen")


@dataclass(frozen=True, slots=True)
class LoggingConfig(s.Section):
    format: str = s.choice("json", LOG_FORMATS)
    level: str = s.choice("info", LOG_LEVELS)


def read_http(root: Mapping[str, Any]) -> HttpConfig:
    return s.read(HttpConfig, f.mapping(root.get("http"), "http"), "http")


def read_logging(root: Mapping[str, Any]) -> LoggingConfig:
    return s.read(LoggingConfig, f.mapping(root.get("logging"), "logging"), "logging")


# The E_BUFFER rule's keys (mproxy.buffers) and the IPv6 prefix: the same names, defaults and ranges in
# `limits` of both schemas; each schema's limits class lists them with these declarations.
GIB = 1024 * 1024 * 1024


def buffer_soft_bytes() -> int:
    return s.integer(8 * 1024 * 1024, 65536, 16 * GIB)


def buffer_hard_bytes() -> int:
    return s.integer(64 * 1024 * 1024, 65536, 16 * GIB)


def buffer_grace_seconds() -> float:
    return s.number(2.0, 0.01, 600)


def tunnel_buffer_bytes() -> int:
    return s.integer(256 * 1024 * 1024, 65536, 64 * GIB)


def ipv6_prefix_length() -> int:
    return s.integer(64, 1, 128)


def check_buffer_limits(soft: int, hard: int, tunnel: int) -> None:
    """The rules between the buffer limits (the Tunnel CRD states them again as CEL)."""
    if hard < soft:
        raise ConfigError("limits.bufferHardBytes", f"must be at least bufferSoftBytes ({hard} < {soft})")
    if tunnel < soft:
        raise ConfigError("limits.tunnelBufferBytes", f"must be at least bufferSoftBytes ({tunnel} < {soft})")


def heartbeat_interval(default: float) -> float:
    return s.number(default, 0.01, 3600)


def heartbeat_timeout(default: float) -> float:
    return s.number(default, 0.02, 7200)


def check_heartbeat(path: str, interval: float, timeout: float) -> None:
    if timeout <= interval:
        raise ConfigError(f.join(path, "timeoutSeconds"),
                          f"must be greater than intervalSeconds ({timeout:g} <= {interval:g})")


def listener_group(value: object, path: str) -> str:
    if not isinstance(value, str) or not LISTENER_GROUP.fullmatch(value):
        raise ConfigError(path, f"must be a listener group name: {GROUP_HINT} (got {value!r})")
    return value


def listener_groups(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    """A list of distinct listener group names (at most MAX_LISTENER_GROUPS)."""
    items = f.seq(obj, key, path)
    if len(items) > MAX_LISTENER_GROUPS:
        raise ConfigError(f.join(path, key), f"has {len(items)} groups; at most {MAX_LISTENER_GROUPS}")
    out = [listener_group(item, f"{f.join(path, key)}[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(out))
