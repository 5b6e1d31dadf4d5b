"""Properties of the PROXY protocol codec (hypothesis): it is hand-written, so it is checked on inputs
nobody wrote by hand (DEVELOPERS.md says why it is not a library)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mproxy.proxyproto import NEED_MORE, V2_SIGNATURE, ProxyHeader, ProxyProtocolError, decode, encode

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(
    lambda a: isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is None).map(str)


@given(version=st.sampled_from(["v1", "v2"]), family=st.sampled_from([ipv4, ipv6]), data=st.data(),
       sport=ports, dport=ports, payload=st.binary(max_size=64))
def test_encode_then_decode_gives_back_both_endpoints(version: str, family: st.SearchStrategy[str],
                                                       data: st.DataObject, sport: int, dport: int,
                                                       payload: bytes) -> None:
    src, dst = data.draw(family), data.draw(family)
    wire = encode(version, (src, sport), (dst, dport))
    hdr = decode(wire + payload)
    assert isinstance(hdr, ProxyHeader)
    assert f"v{hdr.version}" == version and hdr.length == len(wire)
    assert hdr.source is not None and hdr.destination is not None
    assert ipaddress.ip_address(hdr.source[0]) == ipaddress.ip_address(src) and hdr.source[1] == sport
    assert ipaddress.ip_address(hdr.destination[0]) == ipaddress.ip_address(dst)
    assert hdr.destination[1] == dport
    for cut in range(len(wire)):
        assert decode(wire[:cut]) is NEED_MORE


@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b),
                 st.binary(max_size=120).map(lambda b: b"PROXY " + b)))
def test_any_input_is_a_header_need_more_or_a_protocol_error(data: bytes) -> None:
    try:
        hdr = decode(data)
    except ProxyProtocolError:
        return
    if hdr is NEED_MORE:
        return
    assert isinstance(hdr, ProxyHeader) and 0 < hdr.length <= len(data)
