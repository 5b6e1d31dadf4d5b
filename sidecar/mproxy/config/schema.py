"""Each config field declared once: a dataclass field whose default is its config default and whose
metadata (a `Spec`) says how its camelCase key is read, bounded and written back.

    @dataclass(frozen=True, slots=True)
    class LimitsConfig(Section):
        max_frame_bytes: int = integer(1048576, 1024, 100 * 1024 * 1024)

`read(Cls, mapping, path)` parses a section (unknown keys refused, each error naming the field),
`to_dict(instance)` writes it back, `walk(Cls)` lists every key with its spec and default (the docs tables
are checked against it: tests/unit/config/test_schema_agrees.py) and `Spec.json_schema()` gives the bounds
the Tunnel CRD must declare (tests/unit/operator/test_crd_agrees.py). The key is the field name in
camelCase unless `key=` says otherwise. A renamed key keeps its old name as `old=`: still read, with a
deprecation warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, field, fields
from typing import Any, TypeVar

from mproxy.config import fields as f
from mproxy.config.errors import ConfigError

T = TypeVar("T")
SPEC = "mproxy.config.spec"
log = logging.getLogger("mproxy.config")


class Spec:
    """How one field's value is read from its key and written back; subclasses add the bounds."""

    __slots__ = ("key", "old", "omit_default")

    def __init__(self, *, key: str | None = None, old: str | None = None, omit_default: bool = False) -> None:
        self.key = key  # None: the field name in camelCase
        self.old = old  # a deprecated name still accepted
        self.omit_default = omit_default  # to_dict leaves the key out while it holds its default

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return plain(value)

    def json_schema(self) -> dict[str, Any]:
        """The OpenAPI bounds of this field (what a CRD property of it must say)."""
        return {}


class Range(Spec):
    """An integer (`whole`) or a number, lo-hi inclusive."""

    __slots__ = ("hi", "lo", "whole")

    def __init__(self, lo: float, hi: float, *, whole: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.hi, self.whole = lo, hi, whole

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        if self.whole:
            return f.integer(obj, key, path, default, int(self.lo), int(self.hi))
        return f.number(obj, key, path, default, self.lo, self.hi)

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.whole else "number", "minimum": self.lo,
                               "maximum": self.hi}
        return out | ({"format": "int64"} if self.whole and self.hi > 2**31 - 1 else {})


class Choice(Spec):
    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...], **kw: Any) -> None:
        super().__init__(**kw)
        self.options = options

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        return f.choice(obj, key, path, default, self.options)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.options)}


class Str(Spec):
    """A non-empty string; with a None default, absent or null is None."""

    __slots__ = ()

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        if default is None:
            return f.opt_string(obj, key, path)
        return f.string(obj, key, path, default)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}


class Flag(Spec):
    """true or false."""

    __slots__ = ()

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        value = obj.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f.join(path, key), f"must be true or false (got {value!r})")
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Listen(Spec):
    """HOST:PORT, checked at load rather than at bind."""

    __slots__ = ()

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        return f.listen(obj, key, path, default)


class Custom(Spec):
    """A key the section's loader reads itself (lists, nested sections, cross-field rules); `of` is the
    section class below it, walked for the docs check; `many`: a list of them; `key=""`: its keys sit
    in the parent's mapping."""

    __slots__ = ("many", "of")

    def __init__(self, of: type | None = None, *, many: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.of, self.many = of, many


class Section:
    """Base of a config section class: to_dict from its field declarations."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def integer(default: int, lo: int, hi: int, *, key: str | None = None, old: str | None = None,
            omit_default: bool = False) -> int:
    return field(default=default, metadata={SPEC: Range(lo, hi, whole=True, key=key, old=old,
                                                        omit_default=omit_default)})


def number(default: float, lo: float, hi: float, *, omit_default: bool = False) -> float:
    return field(default=default, metadata={SPEC: Range(lo, hi, whole=False, omit_default=omit_default)})


def choice(default: str, options: tuple[str, ...], *, omit_default: bool = False) -> str:
    return field(default=default, metadata={SPEC: Choice(options, omit_default=omit_default)})


def string(default: str) -> str:
    return field(default=default, metadata={SPEC: Str()})


def opt_string(*, key: str | None = None) -> str | None:
    return field(default=None, metadata={SPEC: Str(key=key, omit_default=True)})


def flag(default: bool, *, omit_default: bool = False) -> bool:
    return field(default=default, metadata={SPEC: Flag(omit_default=omit_default)})


def listen(default: str) -> str:
    return field(default=default, metadata={SPEC: Listen()})


def required(spec: Spec) -> Any:
    """A field with no default: its key must be present."""
    return field(metadata={SPEC: spec})


def custom(default: Any = MISSING, *, factory: Any = MISSING, **kw: Any) -> Any:
    """A key read by the section's own code (see Custom)."""
    return field(default=default, default_factory=factory, metadata={SPEC: Custom(**kw)})


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def specs(cls: type) -> Iterator[tuple[str, str, Spec, Any]]:
    """(attribute, key, spec, default) of each config field of a section class, in declaration order."""
    for fld in fields(cls):
        spec = fld.metadata.get(SPEC)
        if spec is not None:
            default = fld.default_factory() if fld.default_factory is not MISSING else fld.default
            yield fld.name, camel(fld.name) if spec.key is None else spec.key, spec, default


def keys(cls: type) -> set[str]:
    """The keys a section accepts, old names included."""
    out = set()
    for _, key, spec, _ in specs(cls):
        if key:
            out.add(key.partition(".")[0])
        if spec.old is not None:
            out.add(spec.old)
    return out


def _find(cls: type, attr: str) -> tuple[str, Spec, Any]:
    for name, key, spec, default in specs(cls):
        if name == attr:
            return key, spec, default
    raise KeyError(f"{cls.__name__} declares no config field {attr!r}")


def spec_of(cls: type, attr: str) -> Spec:
    return _find(cls, attr)[1]


def default(cls: type, attr: str) -> Any:
    """A field's default, for code that must agree with it (the operator's Tunnel model)."""
    return _find(cls, attr)[2]


def read_field(cls: type, attr: str, obj: Mapping[str, Any], path: str, *, key: str | None = None) -> Any:
    """One field of a section, read with its spec under its key (or another: the Tunnel spec's logLevel
    is the sidecar's logging.level)."""
    own_key, spec, fallback = _find(cls, attr)
    return _read_one(spec, obj, key or own_key, path, fallback)


def read(cls: type[T], obj: Mapping[str, Any], path: str, **given: Any) -> T:
    """Every non-Custom field of `cls` from `obj`; `given` holds what the caller read itself."""
    f.only_keys(obj, path, keys(cls))
    values = dict(given)
    for name, key, spec, default in specs(cls):
        if name not in values and not isinstance(spec, Custom):
            values[name] = _read_one(spec, obj, key, path, default)
    return cls(**values)


def _read_one(spec: Spec, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
    if spec.old is not None and spec.old in obj:
        if key in obj:
            raise ConfigError(f.join(path, spec.old), f"is the old name of {key}: give only {key}")
        log.warning("config: %s is deprecated, rename it to %s (same meaning)",
                    f.join(path, spec.old), f.join(path, key))
        key = spec.old
    if default is MISSING and key not in obj:
        raise ConfigError(f.join(path, key), "is required")
    return spec.read(obj, key, path, default)


def to_dict(section: object) -> dict[str, Any]:
    """The camelCase mapping of a section (the inverse of read for everything but Custom keys)."""
    out: dict[str, Any] = {}
    for name, key, spec, default in specs(type(section)):
        value = getattr(section, name)
        if spec.omit_default and value == default:
            continue
        out[key] = spec.dump(value)
    return out


def plain(value: Any) -> Any:
    """A value as YAML writes it: tuples as lists, sections as their mappings."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, Section):
        return value.to_dict()
    return value


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, Spec, Any]]:
    """(dotted key, spec, default) of every key below a section, lists as `key[]`."""
    for _, key, spec, default in specs(cls):
        dotted = f.join(prefix, key) if key else prefix  # key "": the section's keys sit in its parent
        if isinstance(spec, Custom) and spec.of is not None:
            yield from walk(spec.of, dotted + ("[]" if spec.many else ""))
        else:
            yield dotted, spec, default
