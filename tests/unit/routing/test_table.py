"""Route matching: service, port, exact and wildcard names, precedence, default, refusal."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mproxy.routing import Backend, Route, RouteTable


def r(name: str, *, services: tuple[str, ...] = (), ports: tuple[int, ...] = (),
      hostnames: tuple[str, ...] = ()) -> Route:
    return Route(name, (Backend(f"{name}.svc", 1),), frozenset(services), frozenset(ports), hostnames)


TABLE = RouteTable([
    r("wild", services=("https",), hostnames=("*.example.com",)),
    r("deepwild", services=("https",), hostnames=("*.api.example.com",)),
    r("exact", services=("https",), hostnames=("www.example.com",)),
    r("web", services=("http",), ports=(80,), hostnames=("example.com", "*.example.com")),
    r("ssh", services=("ssh",)),
    r("tcp5050", services=("tcp",), ports=(5050,)),
    r("tcpany", services=("tcp",)),
])


@pytest.mark.parametrize(
    ("service", "port", "name", "want"),
    [
        ("https", 443, "www.example.com", "exact"),      # exact beats wildcard
        ("https", 443, "WWW.Example.COM.", "exact"),     # case and trailing dot do not matter
        ("https", 443, "shop.example.com", "wild"),
        ("https", 443, "a.b.example.com", "wild"),       # a wildcard covers any depth
        ("https", 443, "v1.api.example.com", "deepwild"),  # the longer wildcard wins
        ("https", 443, "example.com", None),             # *.example.com does not cover the apex
        ("https", 443, "evil-example.com", None),
        ("https", 443, "", None),
        ("http", 80, "example.com", "web"),
        ("http", 8080, "example.com", None),             # port listed, not this one
        ("ssh", 22, "", "ssh"),
        ("ssh", None, "anything", "ssh"),
        ("tcp", 5050, "", "tcp5050"),                    # a listed port beats any port
        ("tcp", "5050", "", "tcp5050"),
        ("tcp", 6000, "", "tcpany"),
        ("smtp", 25, "", None),
    ],
)
def test_match(service: str, port: int | str | None, name: str, want: str | None) -> None:
    got = TABLE.match(service, port, name)
    assert (got.name if got else None) == want


def _name(route: Route | None) -> str | None:
    return None if route is None else route.name


def test_default_route_and_order() -> None:
    routes = [r("a", services=("tcp",)), r("b", services=("tcp",)), r("fallback")]
    table = RouteTable(routes, default="fallback")
    assert _name(table.match("tcp", 1)) == "a"  # ties: the first listed wins
    assert _name(table.match("https", 443, "x.org")) == "fallback"  # "fallback" matches everything anyway
    strict = RouteTable([r("a", services=("tcp",)), r("fb", services=("none",))], default="fb")
    assert _name(strict.match("https", 443, "x")) == "fb"
    assert RouteTable([r("a", services=("tcp",))]).match("https", 443, "x") is None


def test_wants_name() -> None:
    assert TABLE.wants_name("https", 443)
    assert TABLE.wants_name("http", 80)
    assert not TABLE.wants_name("ssh", 22)
    assert not TABLE.wants_name("tcp", 5050)


def test_bad_tables() -> None:
    with pytest.raises(ValueError, match="unique"):
        RouteTable([r("a"), r("a")])
    with pytest.raises(ValueError, match="default"):
        RouteTable([r("a")], default="b")


def weighted(*backends: Backend) -> Route:
    return Route("w", backends, frozenset({"tcp"}))


A, B = Backend("a.svc", 1, weight=3), Backend("b.svc", 1, weight=1)
REFUSE = Backend("-", 1, weight=1, refuse=True)


def test_pick_by_weight_with_a_seeded_rng() -> None:
    table = RouteTable([weighted(A, B, Backend("never.svc", 1, weight=0))], rng=random.Random(17))
    route = table.routes[0]
    counts = Counter(b.host if b else None for b in (table.pick(route) for _ in range(40_000)))
    assert set(counts) == {"a.svc", "b.svc"}  # weight 0: never
    assert counts["a.svc"] / 40_000 == pytest.approx(0.75, abs=0.01)
    one, two = (RouteTable([route], rng=random.Random(5)) for _ in range(2))
    assert [one.pick(route) for _ in range(200)] == [two.pick(route) for _ in range(200)]  # reproducible


def test_pick_boundaries() -> None:
    route = weighted(A, Backend("zero.svc", 1, weight=0), B)  # cumulative 3, 3, 4
    assert route.pick(0.0) == A
    assert route.pick(0.7499) == A
    assert route.pick(0.75) == B  # the weight-0 backend in between is skipped
    assert route.pick(0.9999999) == B
    assert weighted(A).pick(0.99) == A


def test_a_refuse_share_and_all_zero_weights_refuse() -> None:
    table = RouteTable([weighted(A, REFUSE)], rng=random.Random(3))
    picks = [table.pick(table.routes[0]) for _ in range(8000)]
    assert picks.count(None) / 8000 == pytest.approx(0.25, abs=0.02)
    assert {p for p in picks if p is not None} == {A}
    zero = weighted(Backend("a.svc", 1, weight=0), Backend("b.svc", 1, weight=0))
    assert zero.total_weight == 0 and zero.pick(0.5) is None
    assert weighted(REFUSE).pick(0.0) is None


def test_bad_backends() -> None:
    with pytest.raises(ValueError, match="no backend"):
        Route("x", ())
    with pytest.raises(ValueError, match=">= 0"):
        weighted(Backend("a", 1, weight=-1))
