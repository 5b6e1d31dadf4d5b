"""Client ids and addresses from socket peernames."""

from __future__ import annotations

import socket

import pytest

from mproxy.codec import Address, LocalProtocolError, address_from_peername, pack_end, parse_all


def test_client_id_round_trip() -> None:
    a = Address("IPv6", "::ffff:203.0.113.5", "54321")
    assert a.client_id == "IPv6,::ffff:203.0.113.5,54321"
    assert Address.from_client_id(a.client_id) == a
    [e] = parse_all(pack_end(a))
    assert e.client_id == a.client_id and e.addr == a
    with pytest.raises(LocalProtocolError, match="3 comma-separated"):
        Address.from_client_id("IPv4,1.2.3.4")


def test_from_real_sockets() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            srv = socket.socket(family)
        except OSError:
            continue
        with srv:
            srv.bind((host, 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname()[:2], timeout=5) as cli:
                conn, _ = srv.accept()
                with conn:
                    a = address_from_peername(conn.getpeername())
                    assert a.family == ("IPv4" if family == socket.AF_INET else "IPv6")
                    assert a.address == host
                    assert a.port == str(cli.getsockname()[1])


@pytest.mark.parametrize("bad", [None, "/tmp/sock", ("1.2.3.4",), ("1.2.3.4", "80"), (1, 2)])
def test_not_an_ip_peer(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        address_from_peername(bad)
