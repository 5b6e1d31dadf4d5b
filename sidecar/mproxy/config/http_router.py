"""The `httpRouters` section of the sidecar config: HTTP routers that a stream route hands its streams to
(`routes[].http: NAME`), each holding Gateway API HTTPRoute-shaped routes (see docs/sidecar.md).

The operator renders Gateway API HTTPRoutes into this shape, keeping the spec's camelCase names
(`requestHeaderModifier`, `replacePrefixMatch`, `queryParams`) and its exact-case enums (`PathPrefix`,
`RequestRedirect`), so a rendered route reads like the resource it came from. Every field is declared once
on the dataclasses below; `read_router_list` reads them with one generic walker (`Nested` fields are
sections or lists of sections) and then each section's `check(path)` applies the cross-field rules the
Gateway API's CEL validations state (a ReplacePrefixMatch needs PathPrefix matches, a redirect and a
rewrite never share a rule, a backend is an address or a status, never both). Everything here is pure:
certificates are loaded and regular expressions compiled for matching by mproxy.sidecar.l7.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

from mproxy.config import fields as f
from mproxy.config import schema as s
from mproxy.config.errors import ConfigError

__all__ = [
    "CertificateConfig",
    "HeaderModifierConfig",
    "HeaderValueConfig",
    "HttpBackendConfig",
    "HttpFilterConfig",
    "HttpMatchConfig",
    "HttpRouteConfig",
    "HttpRouterConfig",
    "HttpRuleConfig",
    "HttpTlsConfig",
    "PathMatchConfig",
    "PathModifierConfig",
    "RedirectConfig",
    "RewriteConfig",
    "TimeoutsConfig",
    "ValueMatchConfig",
    "duration_seconds",
    "read_router_list",
]

T = TypeVar("T")
PATH_MATCH_TYPES = ("PathPrefix", "Exact", "RegularExpression")
VALUE_MATCH_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")
UNSUPPORTED_FILTERS = ("RequestMirror", "ExtensionRef", "CORS", "ExternalAuth")
PATH_MODIFIER_TYPES = ("ReplaceFullPath", "ReplacePrefixMatch")
REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_REGEX_CHARS = 1024  # a pattern is compiled once per router; bounded so a config cannot be a ReDoS kit
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")  # Gateway API Duration (GEP-2257)
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


# -- field specs this section needs beyond mproxy.config.schema's -----------------------------------


class Kind(s.Spec):
    """One of a fixed set of exact-case names (the Gateway API's enums); a None default: optional."""

    __slots__ = ("options", "unsupported")

    def __init__(self, options: tuple[Any, ...], *, unsupported: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.options = options
        self.unsupported = unsupported  # known to the spec, not implemented here: a clearer message

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        value = obj.get(key, default)
        if value is None and default is None:
            return None
        if value in self.unsupported:
            raise ConfigError(f.join(path, key), f"{value} is not supported by the sidecar (supported: "
                              f"{', '.join(map(str, self.options))}): leave it out of the rendered config")
        if value not in self.options:
            raise ConfigError(f.join(path, key),
                              f"must be one of {', '.join(map(str, self.options))} (got {value!r})")
        return value

    def json_schema(self) -> dict[str, Any]:
        kind = "integer" if all(isinstance(o, int) for o in self.options) else "string"
        return {"type": kind, "enum": list(self.options)}


class OptInt(s.Spec):
    """An optional integer lo-hi (None: absent)."""

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(omit_default=True)
        self.lo, self.hi = lo, hi

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        if obj.get(key) is None:
            return None
        return f.integer(obj, key, path, 0, self.lo, self.hi)


class Text(s.Spec):
    """A string that may be empty (a header value, a query value, a prefix replacement)."""

    __slots__ = ()

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        value = obj.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f.join(path, key), f"must be a string (got {value!r})")
        text = str(value)  # YAML reads `value: 2` as an integer; a query value "2" is meant
        if len(text) > 4096 or any(c in text for c in "\r\n\0"):
            raise ConfigError(f.join(path, key), "must be at most 4096 characters, with no CR, LF or NUL")
        return text


class Strings(s.Spec):
    """A list of non-empty strings, each checked by `check(value, path) -> normalised`."""

    __slots__ = ("check",)

    def __init__(self, check: Any) -> None:
        super().__init__(omit_default=True)
        self.check = check

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        items = f.seq(obj, key, path)
        return tuple(self.check(v, f"{f.join(path, key)}[{i}]") for i, v in enumerate(items))


class Duration(s.Spec):
    """A Gateway API duration string ("10s", "1m30s", "500ms"); kept as written, read with
    duration_seconds(); "0s" turns the timeout off."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(omit_default=True)

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not _DURATION.match(value):
            raise ConfigError(f.join(path, key), f"must be a duration such as 10s, 1m30s or 500ms "
                              f"(got {value!r})")
        return value


def duration_seconds(text: str | None) -> float | None:
    """"1m30s" -> 90.0; None or zero -> None (no timeout)."""
    if text is None:
        return None
    total = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return total or None


class Nested(s.Custom):
    """A nested section (or, `many`, a list of them) that read_tree reads; a None default: optional."""

    __slots__ = ()


def nested(of: type, *, many: bool = False, optional: bool = False) -> Any:
    if many:
        return field(default=(), metadata={s.SPEC: Nested(of, many=True, omit_default=True)})
    if optional:
        return field(default=None, metadata={s.SPEC: Nested(of, omit_default=True)})
    return field(default_factory=of, metadata={s.SPEC: Nested(of)})


def _hostname(value: object, path: str) -> str:
    name = value.lower() if isinstance(value, str) else ""
    if not _HOSTNAME.match(name) or len(name) > 253:
        raise ConfigError(path, f"must be a host name such as example.com or *.example.com, with no port "
                          f"(got {value!r})")
    return name


def _exact_hostname(value: str | None, path: str) -> None:
    """A redirect's or rewrite's hostname, if given: a host name, not a pattern."""
    if value is not None:
        _hostname(value, path)
        if value.startswith("*."):
            raise ConfigError(path, "must be a host name, not a wildcard")


def _field_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value) or len(value) > 256:
        raise ConfigError(path, f"must be an HTTP header name such as X-Env (got {value!r})")
    return value


def _path(value: str | None, path: str, *, empty: bool = False) -> None:
    if value is None or (empty and value == ""):
        return
    if not value.startswith("/"):
        raise ConfigError(path, f"must be a path starting with / (got {value!r})")


def _regex(value: str, path: str) -> None:
    if len(value) > MAX_REGEX_CHARS:
        raise ConfigError(path, f"must be a regular expression of at most {MAX_REGEX_CHARS} characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(path, f"is not a valid (Python) regular expression: {exc}") from None


# -- the sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateConfig(s.Section):
    cert_file: str = s.required(s.Str())
    key_file: str = s.required(s.Str())


@dataclass(frozen=True, slots=True)
class HttpTlsConfig(s.Section):
    # SNI picks the first certificate one of whose names matches; the first is the default.
    certificates: tuple[CertificateConfig, ...] = nested(CertificateConfig, many=True)

    def check(self, path: str) -> None:
        if not self.certificates:
            raise ConfigError(f"{path}.certificates", "needs at least one {certFile, keyFile}")


@dataclass(frozen=True, slots=True)
class PathMatchConfig(s.Section):
    type: str = field(default="PathPrefix", metadata={s.SPEC: Kind(PATH_MATCH_TYPES)})
    value: str = s.string("/")

    def check(self, path: str) -> None:
        if self.type == "RegularExpression":
            _regex(self.value, f"{path}.value")
        else:
            _path(self.value, f"{path}.value")


@dataclass(frozen=True, slots=True)
class ValueMatchConfig(s.Section):
    """A header or query parameter match."""

    name: str = s.required(s.Str())
    value: str = s.required(Text())
    type: str = field(default="Exact", metadata={s.SPEC: Kind(VALUE_MATCH_TYPES)})

    def check(self, path: str) -> None:
        _field_name(self.name, f"{path}.name")
        if self.type == "RegularExpression":
            _regex(self.value, f"{path}.value")


@dataclass(frozen=True, slots=True)
class HttpMatchConfig(s.Section):
    path: PathMatchConfig = nested(PathMatchConfig)
    headers: tuple[ValueMatchConfig, ...] = nested(ValueMatchConfig, many=True)
    query_params: tuple[ValueMatchConfig, ...] = nested(ValueMatchConfig, many=True)
    method: str | None = field(default=None, metadata={s.SPEC: Kind(METHODS, omit_default=True)})


@dataclass(frozen=True, slots=True)
class HeaderValueConfig(s.Section):
    name: str = s.required(s.Str())
    value: str = s.required(Text())

    def check(self, path: str) -> None:
        _field_name(self.name, f"{path}.name")


@dataclass(frozen=True, slots=True)
class HeaderModifierConfig(s.Section):
    set: tuple[HeaderValueConfig, ...] = nested(HeaderValueConfig, many=True)
    add: tuple[HeaderValueConfig, ...] = nested(HeaderValueConfig, many=True)
    remove: tuple[str, ...] = field(default=(), metadata={s.SPEC: Strings(_field_name)})


@dataclass(frozen=True, slots=True)
class PathModifierConfig(s.Section):
    type: str = s.required(Kind(PATH_MODIFIER_TYPES))
    replace_full_path: str | None = field(default=None, metadata={s.SPEC: Text(omit_default=True)})
    replace_prefix_match: str | None = field(default=None, metadata={s.SPEC: Text(omit_default=True)})

    def check(self, path: str) -> None:
        full, prefix = self.type == "ReplaceFullPath", self.type == "ReplacePrefixMatch"
        for key, value, wanted in (("replaceFullPath", self.replace_full_path, full),
                                   ("replacePrefixMatch", self.replace_prefix_match, prefix)):
            if wanted and value is None:
                raise ConfigError(f"{path}.{key}", f"is required when type is {self.type}")
            if not wanted and value is not None:
                raise ConfigError(f"{path}.{key}", f"must not be set when type is {self.type}")
            _path(value, f"{path}.{key}", empty=prefix)


@dataclass(frozen=True, slots=True)
class RedirectConfig(s.Section):
    scheme: str | None = field(default=None, metadata={s.SPEC: Kind(("http", "https"), omit_default=True)})
    hostname: str | None = s.opt_string()
    port: int | None = field(default=None, metadata={s.SPEC: OptInt(1, 65535)})
    status_code: int = field(default=302, metadata={s.SPEC: Kind(REDIRECT_CODES)})
    path: PathModifierConfig | None = nested(PathModifierConfig, optional=True)

    def check(self, path: str) -> None:
        _exact_hostname(self.hostname, f"{path}.hostname")


@dataclass(frozen=True, slots=True)
class RewriteConfig(s.Section):
    hostname: str | None = s.opt_string()
    path: PathModifierConfig | None = nested(PathModifierConfig, optional=True)

    def check(self, path: str) -> None:
        _exact_hostname(self.hostname, f"{path}.hostname")


_FILTER_KEYS = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier":
                "responseHeaderModifier", "RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite"}


@dataclass(frozen=True, slots=True)
class HttpFilterConfig(s.Section):
    type: str = s.required(Kind(FILTER_TYPES, unsupported=UNSUPPORTED_FILTERS))
    request_header_modifier: HeaderModifierConfig | None = nested(HeaderModifierConfig, optional=True)
    response_header_modifier: HeaderModifierConfig | None = nested(HeaderModifierConfig, optional=True)
    request_redirect: RedirectConfig | None = nested(RedirectConfig, optional=True)
    url_rewrite: RewriteConfig | None = nested(RewriteConfig, optional=True)

    def check(self, path: str) -> None:
        given = {"requestHeaderModifier": self.request_header_modifier,
                 "responseHeaderModifier": self.response_header_modifier,
                 "requestRedirect": self.request_redirect, "urlRewrite": self.url_rewrite}
        own = _FILTER_KEYS[self.type]
        if given[own] is None:
            raise ConfigError(f"{path}.{own}", f"is required when type is {self.type}")
        for key, value in given.items():
            if key != own and value is not None:
                raise ConfigError(f"{path}.{key}", f"must not be set when type is {self.type}")


@dataclass(frozen=True, slots=True)
class HttpBackendConfig(s.Section):
    """One weighted backend: an address, or (`status`) a fixed answer for its share (an invalid
    backendRef is answered 500 for its share of the requests, as the spec asks)."""

    host: str | None = s.opt_string()
    port: int | None = field(default=None, metadata={s.SPEC: OptInt(1, 65535)})
    weight: int = s.integer(1, 0, 1_000_000)
    status: int | None = field(default=None, metadata={s.SPEC: OptInt(400, 599)})

    def check(self, path: str) -> None:
        if self.status is not None:
            if self.host is not None or self.port is not None:
                raise ConfigError(f"{path}.status", "is for a backend with no address: give status, or "
                                  "host and port, not both")
        elif self.host is None or self.port is None:
            raise ConfigError(f"{path}.{'port' if self.host else 'host'}",
                              "is required (host and port of the Service, or status for a fixed answer)")


@dataclass(frozen=True, slots=True)
class TimeoutsConfig(s.Section):
    request: str | None = field(default=None, metadata={s.SPEC: Duration()})
    backend_request: str | None = field(default=None, metadata={s.SPEC: Duration()})

    def check(self, path: str) -> None:
        total, one = duration_seconds(self.request), duration_seconds(self.backend_request)
        if total is not None and one is not None and one > total:
            raise ConfigError(f"{path}.backendRequest", f"must not be longer than request ({self.request})")


@dataclass(frozen=True, slots=True)
class HttpRuleConfig(s.Section):
    # Empty: one match, any path (PathPrefix /).
    matches: tuple[HttpMatchConfig, ...] = nested(HttpMatchConfig, many=True)
    filters: tuple[HttpFilterConfig, ...] = nested(HttpFilterConfig, many=True)
    backends: tuple[HttpBackendConfig, ...] = nested(HttpBackendConfig, many=True)
    timeouts: TimeoutsConfig = nested(TimeoutsConfig)

    def check(self, path: str) -> None:
        seen: dict[str, int] = {}
        for i, flt in enumerate(self.filters):
            if flt.type in seen:
                raise ConfigError(f"{path}.filters[{i}].type", f"{flt.type} is already filters"
                                  f"[{seen[flt.type]}]: give each filter type at most once per rule")
            seen[flt.type] = i
        if "RequestRedirect" in seen and "URLRewrite" in seen:
            raise ConfigError(f"{path}.filters", "must not hold both RequestRedirect and URLRewrite")
        for i, flt in enumerate(self.filters):
            modifier = (flt.request_redirect or flt.url_rewrite)
            if modifier is not None and modifier.path is not None and \
                    modifier.path.type == "ReplacePrefixMatch":
                for j, m in enumerate(self.matches):
                    if m.path.type != "PathPrefix":
                        raise ConfigError(f"{path}.matches[{j}].path.type", f"must be PathPrefix: "
                                          f"filters[{i}] replaces the prefix match")


@dataclass(frozen=True, slots=True)
class HttpRouteConfig(s.Section):
    name: str = s.required(s.Str())
    hostnames: tuple[str, ...] = field(default=(), metadata={s.SPEC: Strings(_hostname)})  # () = any Host
    rules: tuple[HttpRuleConfig, ...] = nested(HttpRuleConfig, many=True)


@dataclass(frozen=True, slots=True)
class HttpRouterConfig(s.Section):
    name: str = s.required(s.Str())
    tls: HttpTlsConfig | None = nested(HttpTlsConfig, optional=True)
    # Oldest first: ties in precedence go to the route listed first (the spec's creation-time order).
    routes: tuple[HttpRouteConfig, ...] = nested(HttpRouteConfig, many=True)
    # Requests served at once by this router; more are answered 503 at once.
    max_concurrent_requests: int = s.integer(1000, 1, 100_000)

    def check(self, path: str) -> None:
        names: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.name in names:
                raise ConfigError(f"{path}.routes[{i}].name", f"duplicate route name {route.name!r}")
            names.add(route.name)


# -- reading --------------------------------------------------------------------------------------


def read_tree(cls: type[T], value: object, path: str) -> T:
    """A section and everything `Nested` below it; then its `check(path)`, if it has one."""
    obj = f.mapping(value, path)
    f.only_keys(obj, path, s.keys(cls))
    given: dict[str, Any] = {}
    for name, key, spec, default in s.specs(cls):
        if not isinstance(spec, Nested):
            continue
        assert spec.of is not None
        sub = f.join(path, key)
        if spec.many:
            given[name] = tuple(read_tree(spec.of, item, f"{sub}[{i}]")
                                for i, item in enumerate(f.seq(obj, key, path)))
        elif obj.get(key) is None:
            if default is MISSING:
                raise ConfigError(sub, "is required")
            given[name] = default
        else:
            given[name] = read_tree(spec.of, obj[key], sub)
    # Not s.read(cls, obj, path, **given): a match's `path` field would clash with its argument.
    for name, _, spec, _ in s.specs(cls):
        if not isinstance(spec, Nested):
            given[name] = s.read_field(cls, name, obj, path)
    out = cls(**given)
    check = getattr(out, "check", None)
    if check is not None:
        check(path)
    return out


def read_router_list(root: Mapping[str, Any]) -> tuple[HttpRouterConfig, ...]:
    out: list[HttpRouterConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(f.seq(root, "httpRouters", "")):
        path = f"httpRouters[{i}]"
        router = read_tree(HttpRouterConfig, item, path)
        if router.name in seen:
            raise ConfigError(f"{path}.name", f"duplicate router name {router.name!r}: names must be unique")
        seen.add(router.name)
        out.append(router)
    return tuple(out)

