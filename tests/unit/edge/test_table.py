"""The routing table: grants decide what a tunnel gets; fewest streams, then round robin."""

from __future__ import annotations

from dataclasses import dataclass

from mproxy.edge.auth import Grant
from mproxy.edge.table import TunnelDirectory


@dataclass(eq=False)
class FakeTunnel:
    label: str
    active_streams: int = 0
    accepting: bool = True
    listener_groups: frozenset[str] | None = None


def grant(*domains: str, ports: tuple[int, ...] = ()) -> Grant:
    return Grant(frozenset(domains), frozenset(ports))


def test_longest_suffix_wins_and_nothing_else_matches() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    broad, narrow = FakeTunnel("broad"), FakeTunnel("narrow")
    table.set_grant(broad, grant("example.com"))
    table.set_grant(narrow, grant("b.example.com"))
    assert table.pick_name("example.com") is broad
    assert table.pick_name("x.example.com") is broad
    assert table.pick_name("a.b.example.com") is narrow
    assert table.pick_name("b.example.com") is narrow
    assert table.pick_name("badexample.com") is None
    assert table.pick_name("com") is None


def test_ports_are_separate_from_names() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    t = FakeTunnel("t")
    table.set_grant(t, grant(ports=(5050,)))
    assert table.pick_port(5050) is t
    assert table.pick_port(5051) is None
    assert table.pick_name("5050") is None


def test_fewest_streams_then_round_robin() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    a, b, c = FakeTunnel("a"), FakeTunnel("b"), FakeTunnel("c")
    for t in (a, b, c):
        table.set_grant(t, grant("app.test"))
    picks = [table.pick_name("app.test") for _ in range(6)]
    assert sorted(p.label for p in picks if p) == ["a", "a", "b", "b", "c", "c"]
    a.active_streams, b.active_streams, c.active_streams = 3, 1, 2
    assert table.pick_name("app.test") is b
    b.accepting = False
    assert table.pick_name("app.test") is c


def test_removal_is_immediate_and_complete() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    a, b = FakeTunnel("a"), FakeTunnel("b")
    table.set_grant(a, grant("app.test", ports=(7000,)))
    table.set_grant(b, grant("app.test"))
    table.remove(a)
    assert all(table.pick_name("app.test") is b for _ in range(5))
    assert table.pick_port(7000) is None
    table.remove(b)
    assert table.pick_name("app.test") is None
    assert table.names() == {} and table.ports() == {} and len(table) == 0


def test_regrant_replaces() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    a = FakeTunnel("a")
    table.set_grant(a, grant("one.test"))
    table.set_grant(a, grant("two.test"))
    assert table.pick_name("one.test") is None
    assert table.pick_name("two.test") is a
    assert table.names() == {"two.test": 1}


def test_listener_groups_scope_which_tunnels_a_client_reaches() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    a = FakeTunnel("a", listener_groups=frozenset({"gw-a"}))
    b = FakeTunnel("b", listener_groups=frozenset({"gw-b", "gw-c"}))
    anywhere = FakeTunnel("anywhere")
    for t in (a, b):
        table.set_grant(t, grant("shop.test", ports=(5432,)))
    assert table.pick_name("www.shop.test", group="gw-a") is a
    assert table.pick_name("www.shop.test", group="gw-c") is b
    assert table.pick_name("www.shop.test", group="gw-d") is None
    assert table.pick_name("www.shop.test") is None  # a listener with no group: only unscoped tunnels
    assert table.pick_port(5432, group="gw-b") is b and table.pick_port(5432) is None
    assert table.tunnels_for_port(5432, "gw-a") == [a]
    table.set_grant(anywhere, grant("test"))
    assert table.pick_name("www.shop.test") is anywhere  # the broader grant, since no scoped one applies
    # The longest suffix among the tunnels this group may use: b's shop.test does not hide "test".
    assert table.match_name("www.shop.test", "gw-d") == ("test", [anywhere])
    assert table.match_name("www.shop.test", "gw-a") == ("shop.test", [a])
    assert table.pick_name("www.shop.test", group="gw-a") is a


def test_scoped_grants_for_peers() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    table.set_grant(FakeTunnel("a", listener_groups=frozenset({"gw-a"})), grant("a.test", ports=(1,)))
    table.set_grant(FakeTunnel("ab", listener_groups=frozenset({"gw-a", "gw-b"})), grant("ab.test"))
    table.set_grant(FakeTunnel("any"), grant("any.test", ports=(2,)))
    table.set_grant(FakeTunnel("nowhere", listener_groups=frozenset()), grant("nowhere.test"))
    anywhere, groups = table.scoped()
    assert anywhere == grant("any.test", ports=(2,))
    assert groups == {"gw-a": grant("a.test", "ab.test", ports=(1,)), "gw-b": grant("ab.test")}


def test_a_group_wide_grant_takes_every_client_of_its_group_below_specific_grants() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    gw = FakeTunnel("gw", listener_groups=frozenset({"gw-a"}))
    table.set_grant(gw, Grant(frozenset({"shop.test"}), groups=frozenset({"gw-a"}),
                              wide=frozenset({"gw-a"})))
    assert table.pick_name("unknown.test", group="gw-a") is gw  # any name on gw-a's listeners
    assert table.match_name("unknown.test", "gw-a")[0] == "*gw-a"  # never a granted domain's key
    assert table.pick_port(9999, group="gw-a") is gw and table.tunnels_for_port(80, "gw-a") == [gw]
    assert table.pick_name("unknown.test", group="gw-b") is None  # not another group's
    assert table.pick_name("unknown.test") is None and table.pick_port(9999) is None  # nor ungrouped
    assert table.wide_groups(gw) == frozenset({"gw-a"})
    # A tunnel granted the name (or the port) itself wins; the group-wide one keeps the rest.
    named = FakeTunnel("named", listener_groups=frozenset({"gw-a"}))
    table.set_grant(named, grant("api.test", ports=(5432,)))
    assert table.pick_name("v1.api.test", group="gw-a") is named
    assert table.pick_port(5432, group="gw-a") is named
    assert table.pick_name("shop.test", group="gw-a") is gw and table.pick_name("x.test", group="gw-a") is gw
    # A specific tunnel that is full is tunnel_full, not a fallback to the group-wide one.
    named.accepting = False
    assert table.pick_name("api.test", group="gw-a") is None
    assert table.match_name("api.test", "gw-a") == ("api.test", [named])
    table.remove(gw)
    assert table.pick_name("x.test", group="gw-a") is None and table.wide_groups(gw) == frozenset()


def test_a_group_wide_grant_needs_the_tunnel_to_serve_that_group() -> None:
    table: TunnelDirectory[FakeTunnel] = TunnelDirectory()
    # The token lists gw-a and gw-b, the tunnel asked for gw-b only: gw-b is granted whole, gw-a not.
    t = FakeTunnel("t", listener_groups=frozenset({"gw-b"}))
    table.set_grant(t, Grant(groups=frozenset({"gw-a", "gw-b"}), wide=frozenset({"gw-a", "gw-b"})))
    assert table.pick_name("x.test", group="gw-b") is t and table.pick_name("x.test", group="gw-a") is None
    anywhere, groups = table.scoped()
    assert anywhere == Grant() and groups == {"gw-b": Grant(wide=frozenset({"gw-b"}))}
    # A re-grant replaces the group-wide part too.
    table.set_grant(t, grant("only.test"))
    assert table.pick_name("x.test", group="gw-b") is None and table.pick_name("only.test", group="gw-b") is t
