"""Free ports for the processes and servers a test starts: the one `free_port()` of every harness.

A port is chosen by binding port 0 and closing the socket again, so until its user binds it, the kernel
may hand it out once more: to a listener bound to port 0, or to the next `free_port()` call. A harness
that chooses several ports before starting anything (a cluster's shared tunnel port, an edge's listeners,
then the sidecars') would then give two listeners one port, and the second process refuses its config.
So this never returns a port it returned before in this process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

_HANDED_OUT: set[int] = set()  # ports returned, maybe not bound yet
_LOCK = threading.Lock()  # some harnesses choose ports from worker threads
_TRIES = 100


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(hosts: Sequence[str] = ("127.0.0.1",), *, udp: bool = False) -> int:
    """A TCP port free on every one of `hosts` (multi-edge tests: edges on 127.0.0.2-4 share one
    tunnel port, as pods do), also free for UDP with `udp=True` (dnsmasq binds both), and never one
    returned before in this process."""
    if not hosts:
        raise ValueError("free_port needs at least one host address")
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    with _LOCK:
        for _ in range(_TRIES):
            with socket.socket(_family(hosts[0]), socket.SOCK_STREAM) as probe:
                probe.bind((hosts[0], 0))
                port = int(probe.getsockname()[1])
            if port in _HANDED_OUT or not _free_everywhere(port, hosts, kinds):
                continue
            _HANDED_OUT.add(port)
            return port
    raise AssertionError(f"no port free on {', '.join(hosts)} in {_TRIES} tries (ports handed out so far: "
                         f"{len(_HANDED_OUT)}); is something holding the ephemeral range?")


def _free_everywhere(port: int, hosts: Sequence[str], kinds: Sequence[socket.SocketKind]) -> bool:
    for host in hosts:
        for kind in kinds:
            try:
                with socket.socket(_family(host), kind) as other:
                    other.bind((host, port))
            except OSError:
                return False
    return True
