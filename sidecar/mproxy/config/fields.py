"""Small typed readers both schemas use: the YAML root, then one field at a time; each error names the
field path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from mproxy.config.errors import ConfigError

_MISSING = object()


def root(source: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """YAML text (or an already parsed mapping) -> the top-level mapping of a config."""
    if isinstance(source, str | bytes):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError("", f"the config is not valid YAML{where}: {exc}") from None
    else:
        data = source
    return mapping(data, "(root)")


def split_listen(value: str, path: str) -> tuple[str, int]:
    """"0.0.0.0:9090", "[::1]:9090" or ":9090" -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(path, f"must be HOST:PORT, e.g. 0.0.0.0:9090 (got {value!r})")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def mapping(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping (got {type(value).__name__})")
    return value


def only_keys(obj: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    """Refuse unknown keys: a typo ("conectTimeout") would otherwise be silently ignored."""
    for key in obj:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(join(path, str(key)), f"unknown field (known fields: {known})")


def string(obj: Mapping[str, Any], key: str, path: str, default: object = _MISSING) -> str:
    value = obj.get(key, default)
    if value is _MISSING:
        raise ConfigError(join(path, key), "is required")
    if not isinstance(value, str) or not value:
        raise ConfigError(join(path, key), f"must be a non-empty string (got {value!r})")
    return value


def listen(obj: Mapping[str, Any], key: str, path: str, default: object = _MISSING) -> str:
    """A HOST:PORT string, checked now so that a bad address fails at load, not at bind."""
    value = string(obj, key, path, default)
    split_listen(value, join(path, key))
    return value


def opt_string(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    return string(obj, key, path)


def integer(obj: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(join(path, key), f"must be an integer {lo}-{hi} (got {value!r})")
    if not lo <= value <= hi:
        raise ConfigError(join(path, key), f"must be {lo}-{hi} (got {value})")
    return value


def number(obj: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(join(path, key), f"must be a number {lo:g}-{hi:g} (got {value!r})")
    if not lo <= value <= hi:
        raise ConfigError(join(path, key), f"must be {lo:g}-{hi:g} (got {value:g})")
    return float(value)


def choice(obj: Mapping[str, Any], key: str, path: str, default: str, options: tuple[str, ...]) -> str:
    value = obj.get(key, default)
    if value is None:
        value = "none" if "none" in options else default
    if value is False and "off" in options:  # YAML 1.1 reads a bare `off` as false
        value = "off"
    if not isinstance(value, str) or value.lower() not in options:
        raise ConfigError(join(path, key), f"must be one of {', '.join(options)} (got {value!r})")
    return value.lower()


def seq(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(join(path, key), f"must be a list (got {type(value).__name__})")
    return value
