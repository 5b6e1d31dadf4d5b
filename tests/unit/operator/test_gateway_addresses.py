"""One address per Gateway (mproxy_operator.gateway_api.addresses): the `listenerGroups` pool of the
class parameters, the assignment of one group per Gateway, the status it gives and the rendered
connector's `edge.listenerGroups`."""

from __future__ import annotations

from typing import Any

import pytest

from mproxy_operator.gateway_api.addresses import Assignment, accepted, assign, programmed
from mproxy_operator.gateway_api.params import Address, ParamsError, parse_params
from mproxy_operator.gateway_api.render import gateway_config, gateway_config_dict

POOL_TEXT = "gw-a: [203.0.113.10]\ngw-b: [203.0.113.11, b.edge.test]\n"


def _cm(**data: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "sys"},
            "data": {"edgeURLs": "wss://e.test/m", "tokenSecret": "tok", **data}}


POOL = parse_params(_cm(listenerGroups=POOL_TEXT)).pool
A = (Address("IPAddress", "203.0.113.10"),)
B = (Address("IPAddress", "203.0.113.11"), Address("Hostname", "b.edge.test"))


def _gw(
    name: str, created: str, addresses: list[dict[str, str]] | None = None, ns: str = "app"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"gatewayClassName": "mproxy", "listeners": []}
    if addresses is not None:
        spec["addresses"] = addresses
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}


def test_pool_is_parsed_in_order() -> None:
    p = parse_params(_cm(listenerGroups=POOL_TEXT))
    assert list(p.pool) == ["gw-a", "gw-b"]
    assert p.pool == {"gw-a": A, "gw-b": B}
    assert parse_params(_cm(listenerGroups="solo: 198.51.100.1")).pool == {
        "solo": (Address("IPAddress", "198.51.100.1"),)}
    assert parse_params(_cm()).listener_groups == ()  # no pool: today's behaviour


@pytest.mark.parametrize(("text", "words"), [
    ("[gw-a]", "must be a YAML mapping"),
    ("gw-a: [203.0.113.10", "is not YAML"),
    ("-bad: [203.0.113.10]", "not a listener group name"),
    ("gw-a: []", "one or more addresses"),
    ("gw-a: [not_an address!]", "gw-a: 'not_an address!' is neither"),
    ("gw-a: [203.0.113.10]\ngw-b: [203.0.113.10]", "in both gw-a and gw-b"),
])
def test_bad_pool_names_the_key(text: str, words: str) -> None:
    with pytest.raises(ParamsError, match=words) as exc:
        parse_params(_cm(listenerGroups=text))
    assert "ConfigMap sys/p: listenerGroups" in str(exc.value)


def test_pool_and_addresses_exclude_each_other() -> None:
    with pytest.raises(ParamsError, match="addresses or listenerGroups, not both"):
        parse_params(_cm(listenerGroups=POOL_TEXT, addresses="203.0.113.7"))


def test_oldest_first_then_exhausted() -> None:
    gws = [_gw("late", "2026-01-03T00:00:00Z"), _gw("first", "2026-01-01T00:00:00Z"),
           _gw("second", "2026-01-02T00:00:00Z")]
    out = assign(gws, POOL, {})
    assert out[("app", "first")] == Assignment("gw-a", A)
    assert out[("app", "second")] == Assignment("gw-b", B)
    late = out[("app", "late")]
    assert late.group is None and late.problem is not None
    assert late.problem[:2] == ("Programmed", "AddressNotAssigned")
    assert programmed(late) == (False, "AddressNotAssigned", late.problem[2])
    assert programmed(out[("app", "first")]) is None


def test_held_groups_are_kept_across_restarts() -> None:
    """The operator restarted: what the connector ConfigMaps say is kept, even against age order."""
    gws = [_gw("old", "2026-01-01T00:00:00Z"), _gw("new", "2026-01-02T00:00:00Z")]
    out = assign(gws, POOL, {("app", "new"): "gw-a"})
    assert out[("app", "new")].group == "gw-a" and out[("app", "old")].group == "gw-b"


def test_a_race_on_one_group_goes_to_the_oldest() -> None:
    gws = [_gw("old", "2026-01-01T00:00:00Z"), _gw("new", "2026-01-02T00:00:00Z")]
    out = assign(gws, POOL, {("app", "new"): "gw-b", ("app", "old"): "gw-b"})
    assert out[("app", "old")].group == "gw-b" and out[("app", "new")].group == "gw-a"


def test_deleting_a_gateway_frees_its_group() -> None:
    held = {("app", "a"): "gw-a", ("app", "b"): "gw-b"}
    gws = [_gw("b", "2026-01-02T00:00:00Z"), _gw("c", "2026-01-03T00:00:00Z")]  # a is gone
    out = assign(gws, POOL, held)
    assert out[("app", "b")].group == "gw-b" and out[("app", "c")].group == "gw-a"


def test_a_deleted_gateways_group_is_handed_out_last() -> None:
    """Its connector ConfigMap (awaiting garbage collection) still records it: the old connector may be
    draining on that address, so a new Gateway gets another free group first."""
    held = {("app", "gone"): "gw-a"}
    out = assign([_gw("new", "2026-01-03T00:00:00Z")], POOL, held)
    assert out[("app", "new")].group == "gw-b"
    out = assign([_gw("new", "2026-01-03T00:00:00Z"), _gw("newer", "2026-01-04T00:00:00Z")], POOL, held)
    assert out[("app", "newer")].group == "gw-a"  # the last free one: still given, not withheld


def test_free_groups_go_round_robin_after_the_last_one_given() -> None:
    """A group a deleted Gateway just gave back is the last to be given again, even once its record is
    gone: the class remembers the group it handed out last."""
    out = assign([_gw("new", "2026-01-03T00:00:00Z")], POOL, {}, after="gw-a")
    assert out[("app", "new")].group == "gw-b"
    out = assign([_gw("new", "2026-01-03T00:00:00Z")], POOL, {}, after="gw-b")
    assert out[("app", "new")].group == "gw-a"  # wraps around
    out = assign([_gw("new", "2026-01-03T00:00:00Z")], POOL, {}, after="left-the-pool")
    assert out[("app", "new")].group == "gw-a"  # pool order


def test_a_group_that_left_the_pool_is_reassigned() -> None:
    out = assign([_gw("a", "2026-01-01T00:00:00Z")], POOL, {("app", "a"): "gone"})
    assert out[("app", "a")].group == "gw-a"


def test_spec_addresses_pick_their_group() -> None:
    gws = [_gw("auto", "2026-01-01T00:00:00Z"),
           _gw("wants-a", "2026-01-02T00:00:00Z", [{"type": "IPAddress", "value": "203.0.113.10"}]),
           _gw("wants-b", "2026-01-03T00:00:00Z", [{"type": "Hostname", "value": "B.edge.test"}])]
    out = assign(gws, POOL, {})
    # The requests are served before the automatic assignment: auto gets what is left.
    assert out[("app", "wants-a")].group == "gw-a" and out[("app", "wants-b")].group == "gw-b"
    auto = out[("app", "auto")]
    assert auto.group is None and auto.problem is not None and auto.problem[1] == "AddressNotAssigned"


def test_spec_address_in_use_is_not_usable() -> None:
    gws = [_gw("holder", "2026-01-01T00:00:00Z"),
           _gw("wants-a", "2026-01-02T00:00:00Z", [{"value": "203.0.113.10"}])]  # type defaults to IPAddress
    out = assign(gws, POOL, {("app", "holder"): "gw-a"})
    w = out[("app", "wants-a")]
    assert w.group is None and w.problem is not None and w.problem[:2] == ("Programmed", "AddressNotUsable")
    assert "app/holder" in w.problem[2]


def test_spec_address_without_value_is_any_group() -> None:
    out = assign([_gw("g", "2026-01-01T00:00:00Z", [{"type": "IPAddress"}])], POOL, {})
    assert out[("app", "g")].group == "gw-a"


@pytest.mark.parametrize(("addresses", "words"), [
    ([{"value": "192.0.2.1"}], "not an address of the GatewayClass's listenerGroups pool"),
    ([{"type": "NamedAddress", "value": "x"}], "type NamedAddress is not supported"),
    ([{"value": "203.0.113.10"}, {"value": "203.0.113.11"}], "several listener groups"),
])
def test_unsupported_spec_addresses(addresses: list[dict[str, str]], words: str) -> None:
    gw = _gw("g", "2026-01-01T00:00:00Z", addresses)
    a = assign([gw], POOL, {})[("app", "g")]
    assert a.group is None
    ok, reason, message = accepted(a, gw, [])
    assert (ok, reason) == (False, "UnsupportedAddress") and words in message
    assert programmed(a) == (False, "Invalid", "the Gateway is not accepted: no listener group is assigned")


def test_accepted_with_and_without_a_pool() -> None:
    gw = _gw("g", "2026-01-01T00:00:00Z", [{"value": "203.0.113.10"}])
    # Without a pool any spec.addresses is UnsupportedAddress, as before.
    assert accepted(None, gw, [])[:2] == (False, "UnsupportedAddress")
    assert accepted(assign([gw], POOL, {})[("app", "g")], gw, []) == (
        True, "Accepted", "the Gateway is served by an mproxy connector")


def test_the_connector_asks_for_its_group() -> None:
    p = parse_params(_cm(listenerGroups=POOL_TEXT))
    assert gateway_config_dict(p, [], [], "gw-b")["edge"]["listenerGroups"] == ["gw-b"]
    assert gateway_config(p, [], [], "gw-b").edge.listener_groups == ("gw-b",)
    assert "listenerGroups" not in gateway_config_dict(p, [], [])["edge"]  # no pool: as before


def test_own_address_answers_unmatched_hosts_with_the_first_router() -> None:
    from mproxy_operator.gateway_api.listeners import parse_listeners
    from mproxy_operator.gateway_api.render import HTTP_ROUTERS

    if not HTTP_ROUTERS:
        pytest.fail("this connector schema has no httpRouters")
    p = parse_params(_cm(listenerGroups=POOL_TEXT))
    gw = {"metadata": {"name": "g", "namespace": "app"}, "spec": {"listeners": [
        {"name": "a", "protocol": "HTTP", "port": 80, "hostname": "a.example.com"},
        {"name": "b", "protocol": "HTTP", "port": 80, "hostname": "*.example.com"},
        {"name": "any", "protocol": "HTTP", "port": 8080},
    ]}}
    listeners = parse_listeners(gw)
    routes = gateway_config_dict(p, [], listeners, "gw-a")["routes"]
    # Exact, wildcard, then the catch-alls: port 80's unmatched names go to listener a's router (404);
    # port 8080 has a catch-all listener and gets no extra route.
    assert [(r["name"], r["http"], r["match"].get("hostnames")) for r in routes] == [
        ("http.a", "a", ["a.example.com"]), ("http.b", "b", ["*.example.com"]),
        ("http.any", "any", None), ("http.80.unmatched", "a", None)]
    gateway_config(p, [], listeners, "gw-a")  # the sidecar's schema takes it
    # Without a group the port is shared with other Gateways: no catch-all.
    shared = gateway_config_dict(p, [], listeners)["routes"]
    assert [r["name"] for r in shared] == ["http.a", "http.b", "http.any"]
