"""Small typed readers for validating a parsed YAML mapping; each error names the field path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mproxy.config.errors import ConfigError

_MISSING = object()


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
