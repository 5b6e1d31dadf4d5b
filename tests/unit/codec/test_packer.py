"""Packer: reference shapes, legacy padding, and refusal (naming the field) of what the wire cannot carry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mproxy.codec import (
    MAX_HEADER,
    VERSION_BYTE,
    Address,
    Error,
    LocalProtocolError,
    data_header_packer,
    header_room,
    pack,
    pack_checked_header,
    pack_connection,
    pack_control,
    pack_data,
    pack_data_header,
    pack_end,
    pack_error,
    pack_header,
    pack_pause,
    pack_resume,
    parse_all,
)
from mproxy.codec.errors import RemoteProtocolError

A = Address("IPv4", "127.0.1.1", "4321")


def h(text: str) -> bytes:
    return bytes([0xFE, len(text)]) + text.encode()


def test_header_shapes() -> None:
    head = pack_header(A, "https", 5, serviceport=443, name="x.io")
    assert head == h("IPv4,127.0.1.1,4321,5,https,443,x.io")
    assert pack_header(None, "control", 9) == b"\xfe\x0c,,,9,control"
    assert pack_header(A, "control", 9) == b"\xfe\x0c,,,9,control"  # addr ignored, as the reference does
    conn = pack_connection(A, service="https", serviceport="443", name="x.io")
    assert conn == h("IPv4,127.0.1.1,4321,0,connection,443,x.io,https")
    assert pack_data_header(A, 10, service="tcp", serviceport=5050) == h("IPv4,127.0.1.1,4321,10,tcp,5050,")
    assert pack_end(A) == h("IPv4,127.0.1.1,4321,0,end,,")
    assert VERSION_BYTE == 0xFE and MAX_HEADER == 255


def test_legacy_pad_and_header_only() -> None:
    assert pack(A, b"", "end") == h("IPv4,127.0.1.1,4321,1,end,,") + b" "
    assert pack(A, b"", "end", legacy_pad=False) == pack_end(A)
    assert pack(A, b"abc", "tcp") == pack_header(A, "tcp", 3) + b"abc"


def test_json_bodies() -> None:
    err = pack_error(A, "no matching connection", "E_NO_CONN")
    assert err.endswith(b'{"message":"no matching connection","code":"E_NO_CONN"}')
    assert pack_pause(A) == pack_header(A, "pause", 1) + b"0"  # never without a body (telebit's device)
    assert pack_resume(A) == pack_header(A, "resume", 1) + b"0"
    assert pack_pause(A, 1048577) == pack_header(A, "pause", 7) + b"1048577"
    assert pack_resume(A, 5) == pack_header(A, "resume", 1) + b"5"
    assert pack_control([-1, None]).hex() == "fe0c2c2c2c392c636f6e74726f6c5b2d312c6e756c6c5d"
    [e] = parse_all(err)
    assert isinstance(e, Error)
    assert (e.message, e.code) == ("no matching connection", "E_NO_CONN")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"addr": Address("IPv4", "1,2", "3")}, "address"),
        ({"addr": Address("IP,v4", "1", "3")}, "family"),
        ({"addr": Address("IPv4", "1", "3,")}, "port"),
        ({"service": "ht,tp"}, "service"),
        ({"serviceport": "4,43"}, "serviceport"),
        ({"name": "a,b.example"}, "name"),
        ({"service": "connection", "servicename": "h,ttps"}, "servicename"),
        ({"name": "exämple.com"}, "name"),
    ],
)
def test_refuses_commas_and_non_ascii_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    args = {"addr": A, "service": "https", "serviceport": "443", "name": "x.io", **kwargs}
    with pytest.raises(LocalProtocolError, match=rf"^field {field}="):
        pack_header(args.pop("addr"), args.pop("service"), 1, **args)


@pytest.mark.parametrize("bad", ["038983", "+38983", " 80", "80 ", "65536", "0443", "-1", "1e3",
                                 "\uff18\uff10"])
@pytest.mark.parametrize("field", ["port", "serviceport"])
def test_refuses_non_canonical_ports_the_parser_refuses(field: str, bad: str) -> None:
    """Never send what we would refuse: each of these spellings makes our parser fail the tunnel."""
    addr = Address("IPv4", "127.0.1.1", bad) if field == "port" else A
    serviceport = bad if field == "serviceport" else "443"
    if bad.isascii():  # the parser refuses the same header
        with pytest.raises(RemoteProtocolError, match="canonical"):
            parse_all(h(f"IPv4,127.0.1.1,{addr.port},1,https,{serviceport},x.io") + b"z")
    packers: list[Callable[[], object]] = [
        lambda: pack_header(addr, "https", 1, serviceport=serviceport, name="x.io"),
        lambda: pack_connection(addr, service="https", serviceport=serviceport, name="x.io"),
        lambda: pack_data_header(addr, 1, service="https", serviceport=serviceport),
        lambda: data_header_packer(addr, service="https", serviceport=serviceport),
        lambda: pack_end(addr, serviceport=serviceport),
        lambda: pack_error(addr, "m", "E", serviceport=serviceport),
        lambda: pack_pause(addr, serviceport=serviceport),
    ]
    for make in packers:
        with pytest.raises(LocalProtocolError, match=rf"^field {field}=.*canonical decimal"):
            make()


def test_packs_every_canonical_port() -> None:
    for port in ("0", "1", "80", "443", "65535"):
        frame = pack_data(Address("IPv4", "127.0.0.1", port), b"x", service="tcp", serviceport=port)
        [event] = parse_all(frame)
        assert (event.port, event.serviceport) == (port, port)
    assert pack_end(A) == h("IPv4,127.0.1.1,4321,0,end,,")  # an empty serviceport is still fine


def test_refuses_header_over_255_bytes() -> None:
    base = len(pack_header(A, "https", 1, serviceport=443, name="")) - 2
    ok = pack_header(A, "https", 1, serviceport=443, name="n" * (MAX_HEADER - base))
    assert ok[1] == MAX_HEADER and len(ok) == MAX_HEADER + 2
    with pytest.raises(LocalProtocolError, match="over the 255-byte limit"):
        pack_header(A, "https", 1, serviceport=443, name="n" * (MAX_HEADER - base + 1))


def test_refuses_negative_length_and_missing_address() -> None:
    with pytest.raises(LocalProtocolError, match="negative"):
        pack_header(A, "tcp", -1)
    with pytest.raises(LocalProtocolError, match="needs the client address"):
        pack_header(None, "tcp", 1)
    with pytest.raises(LocalProtocolError, match="cannot be sent as JSON"):
        pack_control([object()])


FIELD = st.text(st.characters(max_codepoint=127, blacklist_characters=","), max_size=40)


@settings(max_examples=300, deadline=None)
@given(family=FIELD, address=FIELD, port=FIELD, service=FIELD, serviceport=FIELD, name=FIELD,
       datalen=st.integers(-5, 10**30))
def test_data_header_packer_equals_pack_data_header(
    family: str, address: str, port: str, service: str, serviceport: str, name: str, datalen: int
) -> None:
    a = Address(family, address, port)
    try:
        expected: bytes | str = pack_data_header(
            a, datalen, service=service, serviceport=serviceport, name=name
        )
    except LocalProtocolError as err:
        expected = str(err)
    try:
        header = data_header_packer(a, service=service, serviceport=serviceport, name=name)
        got: bytes | str = header(datalen)
    except LocalProtocolError as err:
        got = str(err)
    if isinstance(got, str) and isinstance(expected, bytes):
        # Created with datalen 0: fields that only fit with a short datalen are refused up front.
        assert "over the 255-byte limit" in got
    else:
        assert got == expected


@settings(max_examples=300, deadline=None)
@given(family=FIELD, address=FIELD, port=FIELD, service=FIELD, serviceport=FIELD, name=FIELD,
       datalen=st.integers(0, 10**30))
def test_checked_header_equals_pack_header_and_room_says_when_it_fits(
    family: str, address: str, port: str, service: str, serviceport: str, name: str, datalen: int
) -> None:
    """What the multiplexer relies on: for fields pack_header accepts, pack_checked_header gives the same
    bytes; and header_room says exactly whether a service and datalen still fit."""
    a = Address(family, address, port)
    try:
        expected = pack_header(a, service, datalen, serviceport=serviceport, name=name)
    except LocalProtocolError as err:
        if "over the 255-byte limit" in str(err):
            assert len(service) + len(str(datalen)) > header_room(a, serviceport, name)
        return
    assert pack_checked_header(a, service, datalen, serviceport, name) == expected
    assert len(service) + len(str(datalen)) <= header_room(a, serviceport, name)


def test_checked_header_refuses_a_header_over_255_bytes_instead_of_wrapping() -> None:
    with pytest.raises(OverflowError):
        pack_checked_header(A, "https", 0, "443", "x" * 300)
