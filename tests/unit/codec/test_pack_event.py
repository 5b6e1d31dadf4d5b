"""pack_event mirrors the parser: pack_event(parse(x)) == x over the vector table and random frames."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.codec.test_vectors import VECTORS

from mproxy.codec import EVENT_TYPES, LocalProtocolError, pack_error, pack_event, parse_all
from mproxy.codec import events as ev

CANONICAL = [v for v in VECTORS if v["canonical"]]


@pytest.mark.parametrize("vector", CANONICAL, ids=[v["name"] for v in CANONICAL])
def test_every_canonical_vector_packs_back_byte_for_byte(vector: dict[str, Any]) -> None:
    assert b"".join(pack_event(e) for e in parse_all(vector["wire"])) == vector["wire"]


def test_the_table_has_every_event_type() -> None:
    seen = {type(e) for v in CANONICAL for e in parse_all(v["wire"])}
    assert seen == set(EVENT_TYPES)


FIELD = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters=","), max_size=12)
PORT = st.one_of(st.just(""), st.integers(0, 65535).map(str))
BODY = st.binary(max_size=64)
SERVICE = FIELD.filter(lambda s: s not in {"connection", "control", "end", "error", "pause", "resume"})


@st.composite
def events(draw: st.DrawFn) -> ev.Event:
    common: dict[str, Any] = {"family": draw(FIELD), "address": draw(FIELD), "port": draw(PORT),
              "serviceport": draw(PORT), "name": draw(FIELD), "data": draw(BODY)}
    kind = draw(st.sampled_from(EVENT_TYPES))
    if kind is ev.Connection:
        return ev.Connection(**common, servicename=draw(FIELD))
    if kind is ev.Message:
        return ev.Message(**common, service=draw(SERVICE))
    if kind is ev.Control:
        return ev.Control(data=common["data"])
    if kind is ev.Error and not common["data"]:
        common["data"] = b"{}"  # an Error without a body is packed from its fields (tested below)
    event: ev.Event = kind(**common)
    return event


@settings(max_examples=400, deadline=None)
@given(event=events())
def test_packing_mirrors_parsing(event: ev.Event) -> None:
    wire = pack_event(event)
    (parsed,) = parse_all(wire)
    assert type(parsed) is type(event)
    assert (parsed.family, parsed.address, parsed.port, parsed.data) == (
        (event.family, event.address, event.port, event.data) if not isinstance(event, ev.Control)
        else ("", "", "", event.data))
    assert pack_event(parsed) == wire


def test_an_error_or_control_without_a_body_encodes_its_fields() -> None:
    a = ev.Connection(family="IPv4", address="10.0.0.1", port="80").addr
    error = ev.Error(family=a.family, address=a.address, port=a.port, message="gone", code="E_CONN_CLOSED")
    assert pack_event(error) == pack_error(a, "gone", "E_CONN_CLOSED")
    (back,) = parse_all(pack_event(ev.Control(value=["hello", 1])))
    assert isinstance(back, ev.Control) and back.value == ["hello", 1]


@pytest.mark.parametrize("event", [
    ev.Message(family="IPv4", address="1.2.3.4", port="80", service="end"),
    ev.End(family="IPv4", address="1.2.3.4", port="80", service="https"),
    ev.Event(family="IPv4", address="1.2.3.4", port="80", service="https"),
], ids=["message-as-end", "end-as-https", "bare-event"])
def test_an_event_the_peer_would_read_as_another_is_refused(event: ev.Event) -> None:
    with pytest.raises(LocalProtocolError, match="read back as another event"):
        pack_event(event)
