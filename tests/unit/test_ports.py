"""tests/ports.py: the harnesses' free_port() on real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from tests.ports import free_port

Offer = Callable[[list[int]], Iterator[int]]


@pytest.fixture
def offer(monkeypatch: pytest.MonkeyPatch) -> Offer:
    """Make the kernel's port-0 choice return the given ports first (what it may well do for a port
    chosen but not bound yet); returns the iterator, to see what was used."""

    def install(chosen: list[int]) -> Iterator[int]:
        offered = iter(chosen)

        class Offering(socket.socket):
            def getsockname(self) -> tuple[str, int]:
                host, port = super().getsockname()[:2]
                return host, next(offered, port)

        monkeypatch.setattr(socket, "socket", Offering)  # the module tests.ports binds with
        return offered

    return install


def test_never_the_same_port_twice_even_when_the_kernel_offers_it_again(offer: Offer) -> None:
    first = free_port()
    offered = offer([first, first, first])
    second = free_port()
    assert second != first
    assert next(offered, None) is None  # all three repeats were offered, and refused


def test_a_port_taken_on_one_of_the_hosts_is_refused(offer: Offer) -> None:
    hosts = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # the multi-edge tests' edges (127/8 is all local)
    with socket.socket() as held:
        held.bind(("127.0.0.3", 0))
        held.listen()
        taken = held.getsockname()[1]
        offered = offer([taken])  # free on 127.0.0.2, where the probe binds, not on 127.0.0.3
        got = free_port(hosts)
        assert got != taken and next(offered, None) is None
    for host in hosts:
        with socket.socket() as s:
            s.bind((host, got))


def test_with_udp_the_port_is_free_for_both() -> None:
    port = free_port(udp=True)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))


def test_a_udp_port_taken_is_refused(offer: Offer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        offered = offer([taken])  # free for TCP, where the probe binds, not for UDP
        assert free_port(udp=True) != taken and next(offered, None) is None


def test_no_host_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        free_port(())
