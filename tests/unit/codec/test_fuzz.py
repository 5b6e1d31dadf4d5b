"""Fuzz: any bytes in any chunking give events or a documented RemoteProtocolError, and chunking never
changes the outcome. (tests/fuzz/fuzz_parser.py is the same property under atheris, run on demand.)"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mproxy.codec import Address, Parser, RemoteProtocolError, pack, pack_control, pack_header

REASONS = (
    "version byte", "header length 0", "is not ASCII", "fields; at least 4", "datalen", "stream ended inside",
    "is not a port number",
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _run(chunks: list[bytes], max_body: int = 4096) -> tuple[list[Any], RemoteProtocolError | None]:
    parser = Parser(max_body)
    events: list[Any] = []
    try:
        for c in chunks:
            events += parser.feed(c)
        parser.close()
    except RemoteProtocolError as err:
        events += err.events
        assert any(r in err.reason for r in REASONS), err.reason
        assert 0 <= err.offset <= sum(map(len, chunks))
        return events, err
    return events, None


def _outcome(chunks: list[bytes]) -> tuple[list[Any], tuple[int, str] | None]:
    events, err = _run(chunks)
    return events, (None if err is None else (err.offset, err.reason))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 10**6), max_size=10))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    whole = _outcome([data])
    split = _outcome(_split(data, cuts))
    if whole[1] is not None and "stream ended inside" in whole[1][1]:
        # Where a truncated stream is noticed may differ (mid-header vs mid-body): compare events only.
        assert whole[0] == split[0]
    else:
        assert whole == split


FIELD = st.text(st.characters(max_codepoint=127, blacklist_characters=","), max_size=10)
PORT = st.just("") | st.integers(0, 65535).map(str)  # what the parser takes: canonical decimal or nothing


@st.composite
def streams(draw: Any) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        a = Address(draw(FIELD), draw(FIELD), draw(PORT))
        kind = draw(st.sampled_from(["tcp", "connection", "end", "error", "pause", "resume", "control"]))
        body = draw(st.binary(max_size=200))
        if kind == "control":
            out += pack_control(draw(st.lists(st.integers() | st.text(max_size=5), max_size=4)))
        elif draw(st.booleans()):
            out += pack(a, body, kind, serviceport=draw(PORT), name=draw(FIELD), servicename=draw(FIELD))
        else:
            out += pack_header(a, kind, len(body), name=draw(FIELD)) + body
    return out


@settings(max_examples=200, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 10**6), max_size=12), flip=st.integers(0, 10**6),
       byte=st.integers(0, 255))
def test_valid_streams_any_chunking_and_single_byte_mutations(
    stream: bytes, cuts: list[int], flip: int, byte: int
) -> None:
    whole, err = _run([stream])
    assert err is None
    assert _run(_split(stream, cuts)) == (whole, None)
    viewed = Parser(zero_copy=True)
    assert [e for c in _split(stream, cuts) for e in viewed.feed(c)] == whole
    # One corrupted byte: still only events or a documented error, never anything else.
    i = flip % len(stream)
    _run(_split(stream[:i] + bytes([byte]) + stream[i + 1:], cuts))
