"""EdgePool's bookkeeping without sockets: how many slots it wants, which address a dial gets, which edge
ids a dial must avoid, and what it retires when edges go away."""

from __future__ import annotations

from typing import Any, cast

import pytest

from mproxy.config.edge import load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar.edges import MAX_SLOTS, EdgePool
from mproxy.tunnel.identity import Announced, parse_announced, parse_have


class Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.stopping = False
        self.edge = "ws://edges.test:9443/"


def pool(connections: int = 1, addresses: tuple[str, ...] = ()) -> tuple[EdgePool, list[Slot]]:
    retired: list[Slot] = []

    def spawn(_: EdgePool, index: int) -> Any:
        return Slot(index)

    def retire(slot: Any) -> None:
        slot.stopping = True
        retired.append(slot)

    p = EdgePool("ws://edges.test:9443/", connections, (), 30.0, spawn, retire, lambda _: None)
    p.addresses = list(addresses)
    p._resolved_at = 1e18  # never resolve: the test sets the addresses
    p.reconcile()
    return p, retired


async def test_nothing_announced_keeps_connections_per_url() -> None:
    p, _ = pool(connections=2, addresses=("127.0.0.1", "::1"))
    assert len(p.slots) == 2
    for slot in p.slots:
        await p.choose_address(slot)
        assert p.accept(slot, None)
    assert len(p.slots) == 2 and p.expected == 1 and p.connected_edges == 2


async def test_slots_grow_to_connections_times_announced_replicas() -> None:
    p, _ = pool(connections=2, addresses=("10.0.0.1",))
    first = p.slots[0]
    await p.choose_address(first)
    assert p.accept(first, Announced("edge-a", 3))
    assert len(p.slots) == 6 and p.expected == 3


async def test_dials_spread_over_addresses_and_avoid_one_that_just_failed() -> None:
    p, _ = pool(addresses=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    first = p.slots[0]
    assert await p.choose_address(first) == "10.0.0.1"
    p.accept(first, Announced("edge-a", 3))
    got = [await p.choose_address(s) for s in p.slots[1:]]
    assert sorted(str(a) for a in got) == ["10.0.0.2", "10.0.0.3"]
    slot = p.slots[1]
    failed = await p.choose_address(slot)
    p.dial_failed(slot)
    assert await p.choose_address(slot) != failed


async def test_a_full_edge_is_named_and_a_second_landing_is_refused() -> None:
    p, _ = pool(addresses=("10.0.0.9",))  # one load-balanced address
    a = p.slots[0]
    await p.choose_address(a)
    p.accept(a, Announced("edge-a", 2))
    b = p.slots[1]
    assert p.saturated(b) == {"edge-a"}
    assert p.saturated(a) == set()  # its own tunnel does not count
    await p.choose_address(b)
    assert not p.accept(b, Announced("edge-a", 2))
    assert p.accept(b, Announced("edge-b", 2))
    assert p.connected_edges == 2 == p.expected


async def test_addresses_answering_the_same_id_count_once() -> None:
    p, retired = pool(addresses=("127.0.0.1", "::1"))  # one edge, two addresses (localhost)
    a = p.slots[0]
    await p.choose_address(a)
    p.accept(a, Announced("edge-a", 1))
    assert len(p.slots) == 2  # ::1 might be another edge
    b = p.slots[1]
    assert await p.choose_address(b) == "::1"
    p.duplicate(b, Announced("edge-a", 1))  # the 409
    assert p.expected == 1 and len(p.slots) == 1 and [r.index for r in retired] == [b.index]


async def test_scale_down_retires_idle_slots_first_and_counts_are_capped() -> None:
    p, retired = pool(addresses=("10.0.0.1",))
    a = p.slots[0]
    await p.choose_address(a)
    p.accept(a, Announced("edge-a", 3))
    assert len(p.slots) == 3
    p.duplicate(p.slots[1], Announced("edge-a", 1))  # the edges now say 1
    assert p.slots == [a] and [r.index for r in retired] == [2, 1]
    p.accept(a, Announced("edge-a", 1000))
    assert len(p.slots) == MAX_SLOTS


def test_identity_headers_are_parsed_strictly() -> None:
    edge = {"X-Mproxy-Edge-Id": "edge-0"}
    assert parse_announced({**edge, "X-Mproxy-Edge-Replicas": "3"}) == Announced("edge-0", 3)
    assert parse_announced({**edge, "X-Mproxy-Edge-Replicas": "x"}) == Announced("edge-0", 1)
    assert parse_announced({**edge, "X-Mproxy-Edge-Replicas": "99999"}) == Announced("edge-0", 1000)
    assert parse_announced({"X-Mproxy-Edge-Id": "bad id"}) is None
    assert parse_announced({}) is None
    assert parse_have("a, b,bad id,,c") == {"a", "b", "c"}
    assert parse_have(",".join(f"e{i}" for i in range(100))) == {f"e{i}" for i in range(64)}


def test_config_fields() -> None:
    edge = load_edge_config({"auth": {"secretFile": "s"}, "id": "edge-1", "replicas": 4})
    assert (edge.id, edge.replicas) == ("edge-1", 4)
    with pytest.raises(ConfigError, match=r"^replicas: "):
        load_edge_config({"auth": {"secretFile": "s"}, "replicas": 0})
    side = load_sidecar_config({"edge": {"urls": ["ws://e/"], "nameservers": ["10.96.0.10"],
                                         "resolveSeconds": 5}})
    assert side.edge.nameservers == ("10.96.0.10:53",) and side.edge.resolve_seconds == 5
    assert load_sidecar_config(side.to_dict()) == side
    with pytest.raises(ConfigError, match=r"^edge.nameservers\[0\]: "):
        load_sidecar_config({"edge": {"urls": ["ws://e/"], "nameservers": ["dns.example"]}})
    probing = load_sidecar_config({"edge": {"urls": ["ws://e/"], "probeSeconds": 0}})
    assert probing.edge.probe_seconds == 0 and load_sidecar_config(probing.to_dict()) == probing
    assert load_sidecar_config({"edge": {"urls": ["ws://e/"]}}).edge.probe_seconds == 30
    with pytest.raises(ConfigError, match=r"^edge.probeSeconds: must be 0 \(never\) or 0.1-3600"):
        load_sidecar_config({"edge": {"urls": ["ws://e/"], "probeSeconds": 0.01}})


async def test_an_address_that_never_answers_gets_a_slot_but_is_not_expected() -> None:
    p, _ = pool(addresses=("10.0.0.1", "10.0.0.2", "fd00::1"))  # the AAAA is unroutable from here
    for addr, edge_id in (("10.0.0.1", "edge-a"), ("10.0.0.2", "edge-b")):
        slot = next(s for s in p.slots if s not in p._edges)
        assert await p.choose_address(slot) in {addr, "10.0.0.2", "fd00::1"}
        p._using[slot] = addr
        p.accept(slot, Announced(edge_id, 2))
    assert len(p.slots) == 3  # fd00::1 might be a third edge: keep dialling it
    slot = next(s for s in p.slots if s not in p._edges)
    assert await p.choose_address(slot) == "fd00::1"
    p.dial_failed(slot)
    assert p.expected == 2 == p.connected_edges  # no MproxyTunnelEdgeMissing for it


async def test_behind_one_address_a_probe_slot_learns_the_count_and_goes() -> None:
    p, retired = pool(addresses=("10.0.0.9",))
    p.probe_seconds = 30.0
    a = p.slots[0]
    await p.choose_address(a)
    p.accept(a, Announced("edge-a", 2, live=True))
    b = p.slots[1]
    await p.choose_address(b)
    p.accept(b, Announced("edge-b", 2, live=True))
    assert not p.probe_due()  # not yet probe_seconds since the pool started
    p._probed_at -= 31
    assert p.probe_due()
    p.probe()
    assert len(p.slots) == 3 and p.probing and not p.probe_due()
    probe = p.slots[2]
    assert p.saturated(probe) == {"edge-a", "edge-b"}  # any edge it holds answers 409
    p.duplicate(probe, Announced("edge-a", 2, live=True))  # same count: the spare slot is retired
    assert retired == [cast(Slot, probe)]
    assert (p.probing, len([s for s in p.slots if not s.stopping])) == (False, 2)
    # The next probe finds the count grew (an HPA scaled the edges out): the slots follow.
    p._probed_at -= 31
    p.probe()
    p.duplicate(p.slots[-1], Announced("edge-b", 3, live=True))
    assert len([s for s in p.slots if not s.stopping]) == 3 and p.expected == 3


async def test_no_probe_with_several_addresses_a_slot_down_a_static_count_or_probing_off() -> None:
    p, _ = pool(addresses=("10.0.0.1", "10.0.0.2"))
    p.probe_seconds, p._probed_at = 30.0, -1e9
    for slot in list(p.slots):
        await p.choose_address(slot)
        p.accept(slot, Announced(f"edge-{slot.index}", 1, live=True))
    assert not p.probe_due()  # new pods show up as new addresses
    q, _ = pool(addresses=("10.0.0.9",))
    q.probe_seconds, q._probed_at = 30.0, -1e9
    first = q.slots[0]
    await q.choose_address(first)
    q.accept(first, Announced("edge-a", 2, live=True))
    assert not q.probe_due()  # a slot still dials for the second edge: that dial is the probe
    second = q.slots[1]
    await q.choose_address(second)
    q.accept(second, Announced("edge-b", 2, live=True))
    assert q.probe_due()
    q.probe_seconds = 0.0
    assert not q.probe_due()
    q.probe_seconds = 30.0
    q.duplicate(second, Announced("edge-a", 2))  # a static count: nothing to probe for
    assert not q.probe_due()
