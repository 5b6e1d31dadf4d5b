"""The sections both schemas (sidecar, edge) share: the HTTP endpoint and logging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mproxy.config import fields as f

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
