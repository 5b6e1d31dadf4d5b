"""A router's HTTPRoutes compiled into a matcher: which rule of which route serves a request (pure).

Precedence is the Gateway API's (HTTPRoute spec, "matches"):
1. hostname, among routes: the most specific match of the request's Host wins (an exact name beats a
   wildcard, a longer wildcard a shorter one, any name a route with no hostnames). Only the routes with
   that best hostname take part below; a request none of their rules matches is a 404, it does not fall
   through to a less specific hostname (as a Gateway implementation that builds one virtual host per
   hostname does).
2. across every rule of those routes: an Exact path beats any PathPrefix, a longer prefix a shorter one,
   and any prefix a RegularExpression; then a match with a method beats one without; then the most header
   matches; then the most query parameter matches; ties go to the listing order (routes oldest first,
   then rules, then matches, as the operator lists them).

Paths are matched as sent (the raw path, before percent-decoding: `/a%2Fb` is one segment), without the
query. PathPrefix matches whole segments: `/foo` (or `/foo/`) matches `/foo`, `/foo/` and `/foo/bar`, not
`/foobar`. Regular expressions must match the whole path or value (`re.fullmatch`). Header names are
case-insensitive, a repeated header is matched as its values joined with ","; a repeated query parameter is
matched by its first value. The entries are sorted once at compile time, so `select` is a scan that stops
at the first hit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mproxy.config.http_router import (
    HeaderModifierConfig,
    HttpBackendConfig,
    HttpFilterConfig,
    HttpMatchConfig,
    HttpRouterConfig,
    PathMatchConfig,
    RedirectConfig,
    RewriteConfig,
    duration_seconds,
)

__all__ = ["CompiledRouter", "Request", "Rule", "Selected", "compile_router", "host_of", "pick_backend"]

T = TypeVar("T")
_DEFAULT_MATCH = HttpMatchConfig(path=PathMatchConfig())


@dataclass(frozen=True, slots=True)
class Request:
    """What matching reads of a request: Host without port (lowercase), method, raw path, headers by
    lowercase name (repeats joined with ","), query parameters (first value)."""

    host: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rule:
    route: str  # the HTTPRoute's name (a metrics label)
    index: int  # the rule's position in its route
    filters: tuple[HttpFilterConfig, ...]
    backends: tuple[HttpBackendConfig, ...]
    timeout: float | None  # the shorter of timeouts.request and .backendRequest; None: none
    # The filters by type (each at most once per rule: the schema checks it), picked out once.
    request_headers: HeaderModifierConfig | None = field(init=False)
    response_headers: HeaderModifierConfig | None = field(init=False)
    redirect: RedirectConfig | None = field(init=False)
    rewrite: RewriteConfig | None = field(init=False)

    def __post_init__(self) -> None:
        fs = self.filters
        object.__setattr__(self, "request_headers", _first(f.request_header_modifier for f in fs))
        object.__setattr__(self, "response_headers", _first(f.response_header_modifier for f in fs))
        object.__setattr__(self, "redirect", _first(f.request_redirect for f in fs))
        object.__setattr__(self, "rewrite", _first(f.url_rewrite for f in fs))


def _first(values: Iterable[T | None]) -> T | None:
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True, slots=True)
class Selected:
    rule: Rule
    prefix: str | None  # the PathPrefix that matched (ReplacePrefixMatch replaces it), else None


class _Value:
    """An Exact or RegularExpression match of one header or query value."""

    __slots__ = ("exact", "name", "regex")

    def __init__(self, name: str, kind: str, value: str) -> None:
        self.name = name
        self.exact = value if kind == "Exact" else None
        self.regex = re.compile(value) if kind == "RegularExpression" else None

    def test(self, values: Mapping[str, str]) -> bool:
        got = values.get(self.name)
        if got is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(got) is not None
        return got == self.exact


class _Entry:
    __slots__ = ("headers", "key", "method", "path_kind", "path_regex", "path_value", "prefix", "query",
                 "route_index", "rule")

    def __init__(self, rule: Rule, route_index: int, m: HttpMatchConfig) -> None:
        self.rule = rule
        self.route_index = route_index
        self.path_kind = m.path.type
        self.path_value = m.path.value
        self.prefix = m.path.value.rstrip("/") if m.path.type == "PathPrefix" else ""
        self.path_regex = re.compile(m.path.value) if m.path.type == "RegularExpression" else None
        self.method = m.method
        # Only the first of several matches of one name counts (the spec's rule).
        seen: set[str] = set()
        headers = []
        for h in m.headers:
            if h.name.lower() not in seen:
                seen.add(h.name.lower())
                headers.append(_Value(h.name.lower(), h.type, h.value))
        self.headers = tuple(headers)
        seen = set()
        query = []
        for q in m.query_params:
            if q.name not in seen:
                seen.add(q.name)
                query.append(_Value(q.name, q.type, q.value))
        self.query = tuple(query)
        rank = {"Exact": 2, "PathPrefix": 1, "RegularExpression": 0}[m.path.type]
        length = len(m.path.value) if m.path.type != "RegularExpression" else 0
        self.key = (rank, length, 1 if m.method else 0, len(self.headers), len(self.query))

    def test(self, req: Request) -> bool:
        path = req.path
        if self.path_kind == "PathPrefix":
            p = self.prefix
            if p and not (path == p or (path.startswith(p) and path[len(p)] == "/")):
                return False
        elif self.path_kind == "Exact":
            if path != self.path_value:
                return False
        elif self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        if self.method is not None and req.method != self.method:
            return False
        return all(h.test(req.headers) for h in self.headers) and all(q.test(req.query) for q in self.query)


def host_of(header: str) -> str:
    """A Host header's name: lowercase, without port or trailing dot ("[::1]:80" -> "::1")."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _host_score(patterns: Sequence[str], host: str) -> tuple[int, int] | None:
    if not patterns:
        return (0, 0)
    best: tuple[int, int] | None = None
    for pattern in patterns:
        if pattern.startswith("*."):
            suffix = pattern[1:]
            score = (1, len(suffix)) if host.endswith(suffix) and len(host) > len(suffix) else None
        else:
            score = (2, len(pattern)) if host == pattern else None
        if score is not None and (best is None or score > best):
            best = score
    return best


class CompiledRouter:
    """One router's routes, ready to `select` (immutable; a reload compiles a new one)."""

    def __init__(self, cfg: HttpRouterConfig) -> None:
        self.name = cfg.name
        self.config = cfg
        self.route_names = tuple(r.name for r in cfg.routes)
        self._hostnames = tuple(r.hostnames for r in cfg.routes)
        entries: list[_Entry] = []
        for ri, route in enumerate(cfg.routes):
            for xi, rule_cfg in enumerate(route.rules):
                limits = [t for t in (duration_seconds(rule_cfg.timeouts.request),
                                      duration_seconds(rule_cfg.timeouts.backend_request)) if t is not None]
                rule = Rule(route.name, xi, rule_cfg.filters, rule_cfg.backends, min(limits, default=None))
                for m in rule_cfg.matches or (_DEFAULT_MATCH,):
                    entries.append(_Entry(rule, ri, m))
        # Stable: equal keys keep the listing order (route, rule, match).
        entries.sort(key=lambda e: e.key, reverse=True)
        self._entries = tuple(entries)

    def select(self, req: Request) -> Selected | None:
        scores = [_host_score(h, req.host) for h in self._hostnames]
        best = max((s for s in scores if s is not None), default=None)
        if best is None:
            return None
        for e in self._entries:
            if scores[e.route_index] == best and e.test(req):
                return Selected(e.rule, e.prefix if e.path_kind == "PathPrefix" else None)
        return None


def compile_router(cfg: HttpRouterConfig) -> CompiledRouter:
    return CompiledRouter(cfg)


def pick_backend(backends: Sequence[HttpBackendConfig], rand: random.Random | None = None
                 ) -> HttpBackendConfig | None:
    """A backend by weight (weight 0: never); None when no backend has weight (the rule answers 500)."""
    live = [b for b in backends if b.weight > 0]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return (rand or random).choices(live, weights=[b.weight for b in live])[0]
