"""Parser: strictness (each documented error, with its byte offset), dead state, bounded memory, no copies."""

from __future__ import annotations

import types

import pytest

from mproxy.codec import (
    Address,
    Control,
    End,
    Error,
    Message,
    Parser,
    RemoteProtocolError,
    pack_data,
    pack_data_header,
    pack_end,
    parse_all,
)

A = Address("IPv4", "10.1.2.3", "40000")
GOOD = pack_data(A, b"hello", service="https", serviceport=443, name="a.example.com")


def raw(header: bytes) -> bytes:
    """A frame start with a correct length byte around an arbitrary header."""
    return b"\xfe" + bytes([len(header)]) + header


def _error(data: bytes, max_body: int = 1 << 24) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        parse_all(data, max_body)
    return info.value


@pytest.mark.parametrize(
    ("tail", "offset", "reason"),
    [
        (b"\x00\x05abcde", 0, "version byte 0x00 is not 0xfe"),
        (b"\xfe\x00", 1, "header length 0 is invalid"),
        (raw(b"a,b,c"), 2, "has 3 fields"),
        (raw(b"a,b,c,x"), 8, "datalen 'x' is not a decimal number"),
        (raw(b"a,b,c,-1"), 8, "datalen '-1' is negative"),
        (raw(b"a,b,c,,"), 8, "datalen '' is empty"),
        (raw(b"a,b,c, 1"), 8, "datalen ' 1' is not a decimal number"),
        (raw(b"a,b,c,0x"), 8, "not a decimal number"),
        (raw(b"a,\xc3\xa9,c,0"), 4, "header byte 0xc3 is not ASCII"),
    ],
)
def test_documented_errors_name_offset_and_reason(tail: bytes, offset: int, reason: str) -> None:
    err = _error(GOOD + tail)
    assert err.offset == len(GOOD) + offset
    assert reason in err.reason
    assert str(err).startswith(f"byte {len(GOOD) + offset}: ")
    # Everything before the fault was decoded and handed over with the error.
    assert [type(e) for e in err.events] == [Message]


def test_body_over_limit_is_refused_before_buffering() -> None:
    parser = Parser(max_body=1000)
    head = pack_data_header(A, 1001, service="tcp")
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(head)  # the header alone is enough to refuse: no body byte was awaited
    assert "1001 is over the 1000-byte body limit" in info.value.reason
    assert info.value.offset == head.index(b",1001,") + 1
    assert isinstance(parser.feed, types.MethodType) and parser.feed.__self__ is parser
    ok = Parser(max_body=1000)
    assert ok.feed(pack_data_header(A, 1000, service="tcp") + b"x" * 1000)[0].data == b"x" * 1000


def test_huge_declared_length_is_refused() -> None:
    err = _error(pack_data_header(A, 10**40, service="tcp"))
    assert "over the" in err.reason


def test_dead_parser_keeps_raising_the_same_error() -> None:
    parser = Parser()
    with pytest.raises(RemoteProtocolError) as first:
        parser.feed(b"\x01")
    with pytest.raises(RemoteProtocolError) as again:
        parser.feed(GOOD)
    assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        parser.close()


def test_offsets_are_absolute_across_chunks() -> None:
    parser = Parser()
    assert len(parser.feed(GOOD)) == 1
    assert parser.feed(b"\xfe") == []
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(b"\x00")
    assert info.value.offset == len(GOOD) + 1
    parser = Parser()
    frame = raw(b"10.0.0.1,1,2,\xff")
    parser.feed(GOOD + frame[:10])
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(frame[10:])
    assert info.value.offset == len(GOOD) + 2 + 13
    assert info.value.reason == "header byte 0xff is not ASCII"


def test_errors_found_in_a_split_header() -> None:
    parser = Parser()
    assert parser.feed(GOOD + b"\xfe") != []
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(raw(b"A,B,C,1Zxx")[1:] + b"more")
    assert info.value.reason == "datalen '1Zxx' is not a decimal number"
    assert info.value.offset == len(GOOD) + 2 + 6
    assert info.value.events == []  # GOOD was returned by the earlier feed


def test_stream_ending_inside_a_frame() -> None:
    err = _error(GOOD[:5])
    assert err.offset == 0 and "inside a frame header" in err.reason
    err = _error(GOOD[:-2])
    assert err.offset == len(GOOD) - 2 and "2 of 5 body bytes missing" in err.reason
    assert parse_all(b"") == []


def test_bounded_memory_while_waiting() -> None:
    parser = Parser(max_body=64)
    # A full-length header trickling in is held (<= 257 bytes) and nothing else.
    head = b"\xfe\xff" + b"IPv4,1.2.3.4,5,0,tcp,," + b"n" * (255 - 22)
    for i in range(len(head) - 1):
        assert parser.feed(head[i:i + 1]) == []
    assert len(parser._head) == 256
    assert parser.feed(head[-1:])[0].name == "n" * 233
    assert parser.at_boundary


def test_chunk_that_is_exactly_a_body_is_not_copied() -> None:
    body = bytes(range(256)) * 64
    parser = Parser()
    assert parser.feed(pack_data_header(A, len(body), service="tcp")) == []
    [event] = parser.feed(body)
    assert event.data is body


def test_body_split_over_chunks_is_joined_once() -> None:
    body = b"0123456789" * 100
    parser = Parser()
    out = parser.feed(pack_data_header(A, len(body), service="tcp") + body[:10])
    assert out == []
    out = parser.feed(memoryview(body)[10:500])
    assert out == []
    out = parser.feed(bytearray(body[500:]) + pack_end(A))
    assert [type(e) for e in out] == [Message, End]
    assert out[0].data == body
    assert parser.offset == len(pack_data_header(A, len(body), service="tcp")) + len(body) + len(pack_end(A))


def test_header_cache_is_bounded() -> None:
    parser = Parser()
    for i in range(2000):
        parser.feed(pack_data(Address("IPv4", "1.1.1.1", str(i)), b"x", service="tcp"))
    assert len(parser._cache) <= 512


def test_many_frames_in_one_chunk_keep_order() -> None:
    frames = [
        pack_data(Address("IPv4", "1.1.1.1", str(i)), str(i).encode(), service="tcp") for i in range(300)
    ]
    events = Parser().feed(b"".join(frames))
    assert [e.port for e in events] == [str(i) for i in range(300)]
    assert [e.data for e in events] == [str(i).encode() for i in range(300)]


def test_extra_header_fields_are_ignored_like_the_reference() -> None:
    [event] = parse_all(raw(b"IPv4,a,1,0,tcp,2,n,s,x,y"))
    assert (event.service, event.serviceport, event.name) == ("tcp", "2", "n")


def test_error_body_that_is_not_json() -> None:
    [event] = parse_all(raw(b"IPv4,a,1,4,error,,") + b"oops")
    assert isinstance(event, Error)
    assert (event.kind, event.message, event.code) == ("error", "oops", "E_UNKNOWN_ERR")


def test_control_body_that_is_not_json() -> None:
    [event] = parse_all(raw(b",,,3,control") + b"{[}")
    assert isinstance(event, Control)
    assert event.kind == "control" and event.value is None and event.data == b"{[}"


def test_fast_built_events_equal_constructed_ones() -> None:
    events = parse_all(GOOD + pack_end(A))
    expected = [
        Message(family="IPv4", address="10.1.2.3", port="40000", service="https", serviceport="443",
                name="a.example.com", data=b"hello"),
        End(family="IPv4", address="10.1.2.3", port="40000", service="end"),
    ]
    assert events == expected
    assert hash(events[0]) == hash(expected[0])
    assert repr(events[1]) == repr(expected[1])
    with pytest.raises(AttributeError):
        events[0].data = b"x"  # type: ignore[misc]


def test_zero_copy_bodies_are_views_of_the_chunk() -> None:
    chunk = GOOD + pack_end(A) + GOOD + pack_data(A, b"", service="tcp")
    copied = Parser().feed(chunk)
    viewed = Parser(zero_copy=True).feed(chunk)
    assert viewed == copied
    body: object = viewed[0].data  # annotated bytes, a memoryview at run time (Parser's docstring)
    assert isinstance(body, memoryview) and body.obj is chunk
    assert body.readonly and bytes(body) == b"hello"
    assert type(viewed[1].data) is bytes  # only Message bodies are views
    assert all(type(e.data) is bytes for e in copied)
    # A body that arrives as its own chunk is that chunk in both modes.
    body = b"z" * 5000
    parser = Parser(zero_copy=True)
    parser.feed(pack_data_header(A, len(body), service="tcp"))
    assert parser.feed(body)[0].data is body


def test_relay_pattern_header_and_body_as_separate_chunks() -> None:
    """The relay sends every header and every body as its own WebSocket message."""
    parser = Parser()
    head = pack_data_header(A, 3, service="tcp")
    end = pack_end(A)
    out = []
    for piece in (head, b"abc", head, b"def", end, end, head, b"gh", b"i", b"\xfe", end[1:]):
        out += parser.feed(piece)
    assert [(e.kind, e.data) for e in out] == [
        ("message", b"abc"), ("message", b"def"), ("end", b""), ("end", b""),
        ("message", b"ghi"), ("end", b""),
    ]
    assert parser.at_boundary
    with pytest.raises(RemoteProtocolError, match="header length 0"):
        parser.feed(b"\xfe\x00\x00")


def test_a_body_starting_at_the_end_of_a_big_chunk_does_not_pin_the_chunk() -> None:
    big = pack_data(A, b"x" * 100_000, service="tcp")
    head = pack_data_header(A, 10, service="tcp")
    parser = Parser()
    assert len(parser.feed(big + head + b"abc")) == 1
    [part] = parser._parts
    assert type(part) is bytes and part == b"abc"  # a copy of 3 bytes, not a view of 100 KB
    parser = Parser()
    parser.feed(pack_data_header(A, 1000, service="tcp") + b"a" * 900)
    [part] = parser._parts
    assert isinstance(part, memoryview)  # most of the chunk: a view, copied once when joined
    assert parser.feed(b"b" * 100)[0].data == b"a" * 900 + b"b" * 100


@pytest.mark.parametrize(("header", "what"), [
    (b"IPv4,1.2.3.4,5000,05,tcp,443,", "datalen '05'"),
    (b"IPv4,1.2.3.4,5000,5,tcp,038983,", "serviceport '038983'"),
    (b"IPv4,1.2.3.4,5000,5,tcp,+38983,", "serviceport '+38983'"),
    (b"IPv4,1.2.3.4,5000,5,tcp, 443,", "serviceport ' 443'"),
    (b"IPv4,1.2.3.4,5000,5,tcp,443 ,", "serviceport '443 '"),
    (b"IPv4,1.2.3.4,5000,5,tcp,65536,", "serviceport '65536'"),
    (b"IPv4,1.2.3.4,+5000,5,tcp,443,", "port '+5000'"),
    (b"IPv4,1.2.3.4,05000,5,tcp,443,", "port '05000'"),
])
def test_non_canonical_numbers_in_routed_fields_are_refused(header: bytes, what: str) -> None:
    # Issue 10 item 8: int() read `038983` and `+38983` as port 38983; two spellings, one port.
    from mproxy.codec import Parser, RemoteProtocolError

    frame = bytes([0xFE, len(header)]) + header + b"hello"
    with pytest.raises(RemoteProtocolError) as err:
        Parser().feed(frame)
    assert what in err.value.reason and "canonical" in err.value.reason
    start = 2 + header.index(what.split("'")[1].encode())
    assert err.value.offset == start


def test_canonical_numbers_and_empty_ports_still_parse() -> None:
    from mproxy.codec import Parser

    for header in (b"IPv4,1.2.3.4,0,0,end,,", b"IPv4,1.2.3.4,65535,5,tcp,0,", b",,,5,control"):
        frame = bytes([0xFE, len(header)]) + header + b"hello"[: int(header.split(b",")[3])]
        assert Parser().feed(frame)
