"""Send-buffer auto-sizing from the kernel's RTT (TCP_INFO) on a real loopback connection."""

from __future__ import annotations

import socket

from mproxy.tunnel.sockbuf import CEILING, FLOOR, auto_send_buffer, set_send_buffer, tcp_rtt_seconds


def test_rtt_of_a_loopback_connection_and_the_buffer_it_gets() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as c:
            a, _ = srv.accept()
            with a:
                for _ in range(5):
                    c.sendall(b"x" * 100)
                    a.recv(1000)
                    a.sendall(b"y")
                    c.recv(10)
                rtt = tcp_rtt_seconds(c)
                assert rtt is not None and 0 < rtt < 0.05
                size = auto_send_buffer(rtt)
                assert size == FLOOR  # loopback: the floor
                assert set_send_buffer(c, size)
                # Linux doubles the value it is given (bookkeeping overhead).
                assert c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= size


def test_auto_sizes_for_the_target_rate_within_bounds() -> None:
    assert auto_send_buffer(0.02) == 2_000_000  # 20 ms at 100 MB/s
    assert auto_send_buffer(1.0) == CEILING
    assert auto_send_buffer(None) == CEILING  # no TCP_INFO: do not starve the tunnel
    assert auto_send_buffer(0.0) == FLOOR
