"""The vector table: every vector fed whole, one byte at a time and split at every point; round trip."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mproxy.codec import Connection, Event, Parser, pack_header, parse_all

VECTORS_DIR = Path(__file__).parent / "vectors"


def _load() -> list[dict[str, Any]]:
    table = json.loads((VECTORS_DIR / "vectors.json").read_text())
    def wire(v: dict[str, Any]) -> bytes:
        if "wire_hex" in v:
            return bytes.fromhex(v["wire_hex"])
        return (VECTORS_DIR / str(v["wire_file"])).read_bytes()

    return [{**v, "wire": wire(v)} for v in table["vectors"]]


EventJson = Callable[[Event], dict[str, Any]]  # the event_json fixture (conftest.py)
VECTORS = _load()
IDS = [v["name"] for v in VECTORS]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_whole(vector: dict[str, Any], event_json: EventJson) -> None:
    assert [event_json(e) for e in parse_all(vector["wire"])] == vector["events"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_one_byte_at_a_time(vector: dict[str, Any], event_json: EventJson) -> None:
    parser = Parser()
    events = []
    for i in range(len(vector["wire"])):
        events += parser.feed(vector["wire"][i:i + 1])
    assert parser.at_boundary
    assert parser.offset == len(vector["wire"])
    assert [event_json(e) for e in events] == vector["events"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_every_two_way_split(vector: dict[str, Any], event_json: EventJson) -> None:
    wire = vector["wire"]
    for cut in range(len(wire) + 1):
        parser = Parser()
        events = parser.feed(wire[:cut]) + parser.feed(bytearray(wire[cut:]))
        assert [event_json(e) for e in events] == vector["events"], f"split at {cut}"


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["canonical"]], ids=lambda v: v["name"])
def test_round_trip(vector: dict[str, Any]) -> None:
    out = b""
    for e in parse_all(vector["wire"]):
        service = "connection" if isinstance(e, Connection) else e.service
        servicename = e.servicename if isinstance(e, Connection) else ""
        out += pack_header(
            e.addr if service != "control" else None, service, len(e.data),
            serviceport=e.serviceport, name=e.name, servicename=servicename,
        ) + e.data
    assert out == vector["wire"]


def test_seed_readme_hexdump_is_the_first_vector() -> None:
    """The seed README's hexdump (old 5-field header) is byte for byte the first vector."""
    tokens: list[str] = []
    for line in (VECTORS_DIR / "seed-readme-tunnelled.hexdump").read_text().splitlines():
        parts = line.split()
        if parts and re.fullmatch(r"[0-9a-f]{7}", parts[0]):
            parts = parts[1:]
        tokens += parts
    wire = bytes(int(t, 16) for t in tokens)
    assert len(wire) == 0xE3
    assert wire == VECTORS[0]["wire"]
    assert wire[28:] == (VECTORS_DIR / "sni.hello.bin").read_bytes()


def test_reference_parse_js_chunkings_deliver_its_12_messages() -> None:
    """proxy-packer's test/parse.js: its stream whole, byte by byte, then doubled and cut in its
    'overlapping' pieces, through one parser: 12 events, every data one the 199-byte ClientHello."""
    wire = (VECTORS_DIR / "parse-js-stream.bin").read_bytes()
    hello = (VECTORS_DIR / "sni.hello.bin").read_bytes()
    parser = Parser()
    events = parser.feed(wire)
    for i in range(len(wire)):
        events += parser.feed(wire[i:i + 1])
    doubled = wire + wire
    for a, b in ((0, 7), (7, 14), (14, 21), (21, 28), (28, 217), (217, 224), (224, 238), (238, len(doubled))):
        events += parser.feed(doubled[a:b])
    assert len(events) == 12
    assert [e.kind for e in events] == ["connection", "message", "end"] * 4
    assert all(e.data == hello for e in events if e.kind == "message")
    assert all(e.service == "foo-https" for e in events if e.kind == "connection")
