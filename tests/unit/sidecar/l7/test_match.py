"""The HTTPRoute matcher (mproxy/sidecar/l7/match.py): the Gateway API's precedence, checked case by case
and against a brute-force oracle of the spec's ordering (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mproxy.config.http_router import HttpBackendConfig, HttpRouterConfig, read_tree
from mproxy.sidecar.l7.match import CompiledRouter, Request, host_of, pick_backend


def router(*routes: dict[str, Any]) -> CompiledRouter:
    return CompiledRouter(read_tree(HttpRouterConfig, {"name": "r", "routes": list(routes)}, "r"))


def rule(tag: str, *matches: dict[str, Any]) -> dict[str, Any]:
    return {"matches": list(matches), "backends": [{"host": tag, "port": 1}]}


def which(r: CompiledRouter, path: str = "/", host: str = "a.test", method: str = "GET",
          headers: dict[str, str] | None = None, query: dict[str, str] | None = None) -> str | None:
    sel = r.select(Request(host, method, path, headers or {}, query or {}))
    return None if sel is None else sel.rule.backends[0].host


def prefix(value: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}, **extra}


def test_prefix_matches_whole_segments() -> None:
    r = router({"name": "x", "rules": [rule("foo", prefix("/foo")), rule("slash", prefix("/bar/"))]})
    assert which(r, "/foo") == which(r, "/foo/") == which(r, "/foo/bar") == "foo"
    assert which(r, "/foobar") is None and which(r, "/fo") is None
    assert which(r, "/bar") == which(r, "/bar/") == which(r, "/bar/x") == "slash"  # trailing / ignored
    assert which(r, "/barx") is None


def test_path_precedence_exact_then_longest_prefix_then_regex() -> None:
    r = router({"name": "x", "rules": [
        rule("regex", {"path": {"type": "RegularExpression", "value": "/a/.*"}}),
        rule("short", prefix("/a")),
        rule("long", prefix("/a/b")),
        rule("exact", {"path": {"type": "Exact", "value": "/a/b/c"}}),
    ]})
    assert which(r, "/a/b/c") == "exact"
    assert which(r, "/a/b/c/d") == "long"
    assert which(r, "/a/x") == "short"
    r2 = router({"name": "x", "rules": [rule("regex", {"path": {"type": "RegularExpression",
                                                                 "value": "/a/[0-9]+"}})]})
    assert which(r2, "/a/12") == "regex" and which(r2, "/a/12x") is None  # the whole path


def test_then_method_then_headers_then_query_then_order() -> None:
    r = router(
        {"name": "old", "rules": [
            rule("plain", prefix("/")),
            rule("q2", prefix("/", queryParams=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])),
            rule("h1", prefix("/", headers=[{"name": "X-A", "value": "1"}])),
            rule("h1q2", prefix("/", headers=[{"name": "X-A", "value": "1"}],
                               queryParams=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])),
            rule("method", prefix("/", method="POST")),
        ]},
        {"name": "new", "rules": [rule("tie", prefix("/", headers=[{"name": "X-A", "value": "1"}]))]},
    )
    assert which(r, "/") == "plain"
    assert which(r, "/", method="POST", headers={"x-a": "1"}) == "method"  # method before headers
    assert which(r, "/", headers={"x-a": "1"}) == "h1"  # the older route wins the tie with "tie"
    assert which(r, "/", headers={"x-a": "1"}, query={"a": "1", "b": "2"}) == "h1q2"
    assert which(r, "/", query={"a": "1", "b": "2"}) == "q2"
    assert which(r, "/", query={"a": "1"}) == "plain"


def test_header_and_query_values() -> None:
    r = router({"name": "x", "rules": [
        rule("re", prefix("/", headers=[{"name": "x-v", "value": "v[0-9]+", "type": "RegularExpression"}])),
        rule("q", prefix("/q", queryParams=[{"name": "Case", "value": "A"}])),
    ]})
    assert which(r, "/", headers={"x-v": "v12"}) == "re"
    assert which(r, "/", headers={"x-v": "v12,v13"}) is None  # repeated values are joined; fullmatch
    assert which(r, "/q", query={"Case": "A"}) == "q"
    assert which(r, "/q", query={"case": "A"}) is None  # query names are case-sensitive
    assert which(r, "/q", query={"Case": "a"}) is None


def test_most_specific_hostname_wins_and_does_not_fall_through() -> None:
    r = router(
        {"name": "any", "rules": [rule("any")]},
        {"name": "wild", "hostnames": ["*.a.test"], "rules": [rule("wild", prefix("/w"))]},
        {"name": "deeper", "hostnames": ["*.b.a.test"], "rules": [rule("deeper")]},
        {"name": "exact", "hostnames": ["x.a.test"], "rules": [rule("exact", prefix("/e"))]},
    )
    assert which(r, "/", "other.test") == "any"
    assert which(r, "/w", "y.a.test") == "wild"
    assert which(r, "/", "y.a.test") is None  # the wildcard routes only; no fall-through to "any"
    assert which(r, "/", "c.b.a.test") == "deeper"  # the longer wildcard
    assert which(r, "/w", "z.y.a.test") == "wild"  # a wildcard matches any depth below it
    assert which(r, "/e", "x.a.test") == "exact" and which(r, "/w", "x.a.test") is None
    assert which(r, "/", "a.test") == "any"  # *.a.test does not match the apex


def test_host_of() -> None:
    assert host_of("Example.COM:8080") == "example.com"
    assert host_of("example.com.") == "example.com"
    assert host_of("[::1]:80") == "::1"
    assert host_of("") == ""


def test_empty_matches_is_any_path_and_empty_router_matches_nothing() -> None:
    r = router({"name": "x", "rules": [{"backends": [{"host": "all", "port": 1}]}]})
    assert which(r, "/anything/at/all") == "all"
    assert which(router(), "/") is None


def test_timeout_is_the_shorter_of_the_two() -> None:
    r = router({"name": "x", "rules": [{"timeouts": {"request": "10s", "backendRequest": "2s"}},
                                       {"matches": [prefix("/b")], "timeouts": {"request": "0s"}}]})
    sel = r.select(Request("h", "GET", "/"))
    assert sel is not None and sel.rule.timeout == 2.0 and sel.prefix == ""
    sel = r.select(Request("h", "GET", "/b/c"))
    assert sel is not None and sel.rule.timeout is None and sel.prefix == "/b"


def test_weighted_pick() -> None:
    a, b, z = (HttpBackendConfig(host=n, port=1, weight=w) for n, w in (("a", 3), ("b", 1), ("z", 0)))
    rand = random.Random(1)
    seen = Counter(pick_backend((a, b, z), rand).host for _ in range(4000))  # type: ignore[union-attr]
    assert seen["z"] == 0 and 2800 <= seen["a"] <= 3200, seen
    assert pick_backend((z,)) is None and pick_backend(()) is None
    assert pick_backend((z, b)) is b


# -- the oracle ------------------------------------------------------------------------------------------

SEGMENTS = st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3).map(lambda s: "/" + "/".join(s))
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(["GET", "POST"]),
    "headers": st.lists(st.builds(lambda n: {"name": n, "value": "1"}, st.sampled_from(["h1", "h2"])),
                        max_size=2, unique_by=lambda h: h["name"]),
    "queryParams": st.lists(st.builds(lambda n: {"name": n, "value": "1"}, st.sampled_from(["q1", "q2"])),
                            max_size=2, unique_by=lambda h: h["name"]),
}
MATCH = st.fixed_dictionaries({
    "path": st.one_of(
        st.builds(lambda v: {"type": "PathPrefix", "value": v}, SEGMENTS),
        st.builds(lambda v: {"type": "Exact", "value": v}, SEGMENTS),
        st.builds(lambda v: {"type": "RegularExpression", "value": v + ".*"}, SEGMENTS)),
}, optional=OPTIONAL)
ROUTES = st.lists(st.fixed_dictionaries({
    "hostnames": st.lists(st.sampled_from(["a.test", "*.test", "*.x.test", "b.x.test"]), max_size=2),
    "rules": st.lists(st.lists(MATCH, max_size=2), min_size=1, max_size=3),
}), min_size=1, max_size=3)
REQUEST = st.builds(Request, host=st.sampled_from(["a.test", "b.x.test", "c.x.test", "other"]),
                    method=st.sampled_from(["GET", "POST"]), path=SEGMENTS,
                    headers=st.dictionaries(st.sampled_from(["h1", "h2"]), st.just("1")),
                    query=st.dictionaries(st.sampled_from(["q1", "q2"]), st.just("1")))


def _oracle(routes: list[dict[str, Any]], req: Request) -> str | None:
    """The spec's order, computed directly: best hostname, then the max over every matching match."""
    import re

    def host_score(names: list[str]) -> tuple[int, int] | None:
        if not names:
            return (0, 0)
        scores = [(2, len(n)) for n in names if n == req.host]
        scores += [(1, len(n) - 1) for n in names if n.startswith("*.") and req.host.endswith(n[1:])]
        return max(scores, default=None)

    def hit(m: dict[str, Any]) -> bool:
        p = m["path"]
        segs = [s for s in req.path.split("/") if s]
        if p["type"] == "PathPrefix":
            want = [s for s in p["value"].split("/") if s]
            ok = segs[:len(want)] == want
        elif p["type"] == "Exact":
            ok = req.path == p["value"]
        else:
            ok = re.fullmatch(p["value"], req.path) is not None
        return ok and m.get("method") in (None, req.method) and all(
            req.headers.get(h["name"]) == "1" for h in m.get("headers", ())) and all(
            req.query.get(q["name"]) == "1" for q in m.get("queryParams", ()))

    scores = [host_score(r["hostnames"]) for r in routes]
    best = max((s for s in scores if s is not None), default=None)
    found = []
    for ri, r in enumerate(routes):
        if scores[ri] != best or best is None:
            continue
        for xi, matches in enumerate(r["rules"]):
            for mi, m in enumerate(matches or [{"path": {"type": "PathPrefix", "value": "/"}}]):
                if hit(m):
                    p = m["path"]
                    rank = {"Exact": 2, "PathPrefix": 1, "RegularExpression": 0}[p["type"]]
                    key = (rank, len(p["value"]) if rank else 0, "method" in m, len(m.get("headers", ())),
                           len(m.get("queryParams", ())))
                    found.append((key, (-ri, -xi, -mi), f"{ri}.{xi}"))
    return max(found)[2] if found else None


@settings(max_examples=400, deadline=None)
@given(ROUTES, REQUEST)
def test_select_agrees_with_the_spec_order(routes: list[dict[str, Any]], req: Request) -> None:
    cfg = [{"name": f"r{ri}", "hostnames": r["hostnames"], "rules": [
        {"matches": matches, "backends": [{"host": f"{ri}.{xi}", "port": 1}]}
        for xi, matches in enumerate(r["rules"])]} for ri, r in enumerate(routes)]
    assert which(router(*cfg), req.path, req.host, req.method, dict(req.headers), dict(req.query)) == \
        _oracle(routes, req)
