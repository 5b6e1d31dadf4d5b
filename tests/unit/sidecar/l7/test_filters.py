"""The HTTPRoute filters' math (mproxy/sidecar/l7/filters.py): the spec's HTTPPathModifier table for
ReplacePrefixMatch, the redirect port rules, header modifiers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from mproxy.config.http_router import HeaderModifierConfig, PathModifierConfig, RedirectConfig, read_tree
from mproxy.sidecar.l7.filters import modify_headers, redirect_location, replace_prefix, rewrite_path

# The Gateway API's HTTPPathModifier table (apis/v1/httproute_types.go): request, prefix, replacement, result.
SPEC_TABLE = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
]


@pytest.mark.parametrize(("path", "prefix", "replacement", "want"), SPEC_TABLE)
def test_replace_prefix_follows_the_spec_table(path: str, prefix: str, replacement: str, want: str) -> None:
    assert replace_prefix(path, prefix, replacement) == want


SEG = st.lists(st.sampled_from(["a", "b", "cd"]), max_size=3)


@given(SEG, SEG, SEG)
def test_replace_prefix_keeps_the_segments_after_the_prefix(prefix: list[str], rest: list[str],
                                                             new: list[str]) -> None:
    path = "/" + "/".join(prefix + rest)
    out = replace_prefix(path, "/" + "/".join(prefix), "/" + "/".join(new))
    assert out == "/" + "/".join(new + rest)


def _redirect(**cfg: Any) -> RedirectConfig:
    return read_tree(RedirectConfig, cfg, "r")


@pytest.mark.parametrize(("cfg", "scheme", "port", "want"), [
    ({}, "http", 80, "http://a.test/p?q=1"),
    ({}, "http", 8080, "http://a.test:8080/p?q=1"),  # the listener's port is kept
    ({"scheme": "https"}, "http", 8080, "https://a.test/p?q=1"),  # a scheme: its well-known port
    ({"scheme": "http"}, "http", 8080, "http://a.test/p?q=1"),
    ({"scheme": "https", "port": 8443}, "http", 80, "https://a.test:8443/p?q=1"),
    ({"port": 443}, "https", 80, "https://a.test/p?q=1"),  # well-known for the scheme: left out
    ({"hostname": "b.test"}, "https", 443, "https://b.test/p?q=1"),
    ({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}, "http", None, "http://a.test/x?q=1"),
])
def test_redirect_location(cfg: dict[str, Any], scheme: str, port: int | None, want: str) -> None:
    assert redirect_location(_redirect(**cfg), scheme=scheme, host="a.test", port=port, path="/p",
                             query="q=1", prefix=None) == want


def test_redirect_replaces_the_matched_prefix_and_brackets_ipv6() -> None:
    cfg = _redirect(path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"})
    assert redirect_location(cfg, scheme="http", host="::1", port=8080, path="/old/x", query="",
                             prefix="/old") == "http://[::1]:8080/new/x"


def test_rewrite_path() -> None:
    full = read_tree(PathModifierConfig, {"type": "ReplaceFullPath", "replaceFullPath": "/f"}, "p")
    pre = read_tree(PathModifierConfig, {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}, "p")
    assert rewrite_path(None, "/a/b", "/a") == "/a/b"
    assert rewrite_path(full, "/a/b", "/a") == "/f"
    assert rewrite_path(pre, "/a/b", "/a") == "/v2/b"
    assert rewrite_path(pre, "/a/b", "") == "/v2/a/b"  # matched by PathPrefix /
    assert rewrite_path(pre, "/a/b", None) == "/v2/a/b"


def test_header_modifier_sets_adds_removes_case_insensitively() -> None:
    mod = read_tree(HeaderModifierConfig, {"set": [{"name": "x-set", "value": "new"}],
                                           "add": [{"name": "X-Add", "value": "2"}],
                                           "remove": ["x-GONE"]}, "m")
    h: CIMultiDict[str] = CIMultiDict([("X-Set", "a"), ("X-Set", "b"), ("X-Add", "1"), ("X-Gone", "1"),
                                       ("X-Gone", "2"), ("Keep", "k")])
    modify_headers(h, mod)
    assert h.getall("X-Set") == ["new"] and h.getall("x-add") == ["1", "2"]
    assert "X-Gone" not in h and h["Keep"] == "k"
