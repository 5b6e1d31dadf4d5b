"""SNI and Host sniffing: the name, "not this protocol" (None) and "need more bytes" kept apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mproxy.codec import MAX_SNIFF_BYTES, NEED_MORE, sniff_http_host, sniff_sni

HELLO = (Path(__file__).parent / "vectors" / "sni.hello.bin").read_bytes()


def test_sni_of_the_reference_hello_and_every_prefix() -> None:
    assert sniff_sni(HELLO) == "pokemap.hellabit.com"
    assert sniff_sni(HELLO + b"trailing application data") == "pokemap.hellabit.com"
    for i in range(len(HELLO)):
        assert sniff_sni(HELLO[:i]) is NEED_MORE, i


def _client_hello(exts: bytes) -> bytes:
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(exts).to_bytes(2, "big") + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return hs


def _sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    lst = len(entry).to_bytes(2, "big") + entry
    return b"\x00\x00" + len(lst).to_bytes(2, "big") + lst


def _records(hs: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(hs), size):
        frag = hs[i:i + size]
        out += b"\x16\x03\x01" + len(frag).to_bytes(2, "big") + frag
    return out


def test_sni_uppercase_fragmented_and_absent() -> None:
    hs = _client_hello(b"\x00\x17\x00\x00" + _sni_ext(b"WWW.Example.COM"))
    assert sniff_sni(_records(hs, 20)) == "www.example.com"  # reassembled across records
    assert sniff_sni(_records(hs, 20)[:50]) is NEED_MORE
    assert sniff_sni(_records(_client_hello(b""), 1000)) is None  # no extension: route by port
    assert sniff_sni(_records(_client_hello(_sni_ext(b"a,b")), 1000)) is None  # unusable in a header


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH\r\n", b"\x16\x01", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"],
)
def test_not_tls(data: bytes) -> None:
    assert sniff_sni(data) is None


def test_sniff_bound() -> None:
    big = b"\x16\x03\x01\x48\x00" + b"\x01\x00\x48\x00"  # claims an 18 KiB hello split over records
    assert sniff_sni(big) is NEED_MORE
    record = b"\x16\x03\x01\x40\x00" + b"\x01\xff\xff\xff" + b"\x00" * (0x4000 - 4)
    endless = record * 3
    assert len(endless) > MAX_SNIFF_BYTES
    assert sniff_sni(endless) is None
    assert sniff_http_host(b"GET /" + b"a" * MAX_SNIFF_BYTES) is None


def test_http_host() -> None:
    assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n") == "example.com"
    assert sniff_http_host(b"POST /x HTTP/1.0\nhost:a.b\n\n") == "a.b"
    assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n") == "::1"
    assert sniff_http_host(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n") is None
    assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n") is None


def test_http_need_more_and_not_http() -> None:
    head = b"GET /index.html HTTP/1.1\r\nAccept: */*\r\nHost: example.com\r\n\r\n"
    for i in range(head.index(b"Host") + len(b"Host: example.com\r\n")):
        assert sniff_http_host(head[:i]) is NEED_MORE, head[:i]
    assert sniff_http_host(b"\x16\x03\x01") is None
    assert sniff_http_host(b"SSH-2.0-x\r\n") is None
    assert sniff_http_host(b"GET / FTP/1.0\r\n") is None
    assert sniff_http_host(b"G E T") is None


HOST = st.from_regex(r"[A-Za-z0-9.-]{1,40}", fullmatch=True)


@st.composite
def first_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tls", "http", "random"]))
    if kind == "tls":
        hs = _client_hello(b"\x00\x17\x00\x00" + _sni_ext(draw(HOST).encode()))
        return _records(hs, draw(st.integers(1, 300)))
    if kind == "http":
        return f"GET /{draw(HOST)} HTTP/1.1\r\nAccept: */*\r\nHost: {draw(HOST)}:8443\r\n\r\nbody".encode()
    return draw(st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(data=first_bytes(), cut=st.integers(0, 10**6))
def test_answers_are_final(data: bytes, cut: int) -> None:
    """Once a sniffer answers (a name or None) for a prefix, more bytes never change the answer."""
    prefix = data[:cut % (len(data) + 1)]
    for sniff in (sniff_sni, sniff_http_host):
        early, late = sniff(prefix), sniff(data)
        assert early is NEED_MORE or early is None or isinstance(early, str)
        if early is not NEED_MORE:
            assert late == early, (sniff.__name__, prefix, early, late)


@settings(max_examples=100, deadline=None)
@given(host=HOST)
def test_names_are_found(host: str) -> None:
    # one trailing dot is dropped (an absolute name); nothing left, or a second one, is no name
    name = host.lower().removesuffix(".")
    expected = name if name and not name.endswith(".") else None
    hs = _client_hello(b"\x00\x17\x00\x00" + _sni_ext(host.encode()))
    assert sniff_sni(_records(hs, 16384)) == expected
    assert sniff_http_host(f"GET / HTTP/1.0\r\nhost:  {host}\r\n\r\n".encode()) == expected


def test_a_trailing_dot_names_the_same_host() -> None:
    # Issue 10 item 8: `example.com.` (an absolute name) was refused instead of routed as example.com.
    hs = _client_hello(_sni_ext(b"Example.COM."))
    assert sniff_sni(_records(hs, 1000)) == "example.com"
    assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n") == "example.com"
    assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: example.com.:8080\r\n\r\n") == "example.com"
    for bad in (b".", b"example.com..", b".."):
        assert sniff_http_host(b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n") is None, bad


@pytest.mark.parametrize("line", [b"Host : example.com", b"Host\t: example.com", b"host  :x"])
def test_whitespace_before_the_host_colon_is_refused(line: bytes) -> None:
    # RFC 9112 5.1: a server must answer 400; the backend would otherwise see no Host at all.
    assert sniff_http_host(b"GET / HTTP/1.1\r\n" + line + b"\r\nHost: other.test\r\n\r\n") is None
