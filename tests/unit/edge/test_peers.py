"""A peer's grants answer is checked field by field and bounded; static peer addresses parse."""

from __future__ import annotations

import json

import pytest

from mproxy.edge.auth import Grant
from mproxy.edge.peers import MAX_GRANT_KEYS, Peer, grant_json, parse_answer, static_targets


def answer(**fields: object) -> bytes:
    return json.dumps({"id": "edge-1", "forwardPort": 8444, "domains": ["Example.com."], "ports": [7022]}
                      | fields).encode()


def test_a_good_answer() -> None:
    edge_id, port, grant, draining, groups = parse_answer(answer())
    assert (edge_id, port, draining, groups) == ("edge-1", 8444, False, {})
    assert grant == Grant(frozenset({"example.com"}), frozenset({7022}))
    peer = Peer("10.0.0.5", edge_id, port, grant, draining, 0.0)
    assert peer.serves("a.b.example.com", 443) and not peer.serves("example.org", 7022)
    assert peer.serves("", 7022) and not peer.serves("", 7023)
    assert peer.serves("a.example.com", 443, "gw-a")  # a tunnel that asked for no group serves every group


def test_grants_per_listener_group() -> None:
    body = answer(domains=[], ports=[], groups={"gw-a": {"domains": ["a.test"], "ports": [5432]},
                                                "gw-b": {"domains": ["b.test"]}})
    *_, grant, draining, groups = parse_answer(body)
    assert grant == Grant() and set(groups) == {"gw-a", "gw-b"}
    peer = Peer("10.0.0.5", "edge-1", 8444, grant, draining, 0.0, groups)
    assert peer.serves("x.a.test", 443, "gw-a") and peer.serves("", 5432, "gw-a")
    assert not peer.serves("x.a.test", 443, "gw-b") and not peer.serves("", 5432, "gw-b")
    assert not peer.serves("x.a.test", 443) and not peer.serves("", 5432)  # not for an ungrouped listener


@pytest.mark.parametrize("bad", [
    b"[]", b"not json", answer(id=""), answer(id=7), answer(forwardPort=0), answer(forwardPort=True),
    answer(domains="example.com"), answer(domains=["bad name!"]), answer(ports=[0]), answer(ports=["80"]),
    answer(draining="no"), answer(domains=[f"n{i}.test" for i in range(MAX_GRANT_KEYS)]),
    answer(domains=5),
    answer(groups=[]), answer(groups={"bad group!": {}}), answer(groups={"g": {"ports": [0]}}),
    answer(groups={"g": []}),
    answer(groups={"g": {"domains": [f"n{i}.test" for i in range(MAX_GRANT_KEYS)]}}),
])
def test_bad_answers_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_answer(bad)


def test_static_targets() -> None:
    assert static_targets(("10.0.0.5", "10.0.0.6:9443", "[fd00::1]:8443", "fd00::2"), 8443) == [
        ("10.0.0.5", 8443), ("10.0.0.6", 9443), ("fd00::1", 8443), ("fd00::2", 8443)]


def test_a_group_wide_grant_between_edges() -> None:
    body = answer(domains=[], ports=[], groups={"gw-a": {"domains": ["a.test"], "ports": [], "all": True},
                                                "gw-b": {"domains": ["b.test"]}})
    *_, grant, draining, groups = parse_answer(body)
    assert groups["gw-a"].wide == frozenset({"gw-a"}) and groups["gw-b"].wide == frozenset()
    peer = Peer("10.0.0.5", "edge-1", 8444, grant, draining, 0.0, groups)
    assert peer.serves_all("gw-a") and not peer.serves_all("gw-b") and not peer.serves_all(None)
    assert not peer.serves("x.test", 443, "gw-a")  # not specifically: it ranks below a specific peer
    assert grant_json(groups["gw-a"]) == {"domains": ["a.test"], "ports": [], "all": True}
    assert grant_json(groups["gw-b"]) == {"domains": ["b.test"], "ports": []}
    with pytest.raises(ValueError, match="all must be a boolean"):
        parse_answer(answer(groups={"gw-a": {"all": "yes"}}))
