"""The edge checks only a stream's connection header against the 255-byte limit (edge/relay.py
_check_header): every data header of that stream must then fit too."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mproxy.codec import Address, LocalProtocolError, pack_connection, pack_data_header

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", max_size=200)


@given(v6=st.booleans(), service=st.sampled_from(["tcp", "udp", "http", "https"]),
       port=st.integers(1, 65535), client_port=st.integers(0, 65535),
       length=st.integers(0, 100 * 1024 * 1024), name=names)
def test_a_connection_header_is_longer_than_any_data_header_of_its_stream(
        v6: bool, service: str, port: int, client_port: int, length: int, name: str) -> None:
    addr = Address("IPv6", "2001:db8::1", str(client_port)) if v6 else Address("IPv4", "10.0.0.1",
                                                                                str(client_port))
    try:
        conn = pack_connection(addr, service=service, serviceport=port, name=name)
    except LocalProtocolError:
        return  # refused already: too long
    data = pack_data_header(addr, length, service=service, serviceport=port, name=name)
    assert len(data) < len(conn)
