"""The conformance harness's stand-in for the suite's coredns pod (tests/k8s/gatewayapi/dns_responder.py):
a real process on a real UDP socket answers a query with its ID, question and the client's A record."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "k8s" / "gatewayapi" / "dns_responder.py"
QUESTION = b"\x03foo\x03bar\x03com\x00" + struct.pack("!HH", 1, 1)  # foo.bar.com. A IN


@pytest.fixture
def responder() -> Iterator[tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert b"dns responder on udp" in proc.stdout.readline()  # bound: it prints after bind()
        yield "127.0.0.1", port
    finally:
        proc.kill()
        proc.wait()


def _ask(addr: tuple[str, int], msg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(msg, addr)
        return s.recv(4096)


def test_a_query_gets_its_id_question_and_the_clients_address(responder: tuple[str, int]) -> None:
    reply = _ask(responder, struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + QUESTION)
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert (qid, qd, an, ns, ar) == (0x1234, 1, 1, 0, 0)
    assert flags & 0x8000 and flags & 0x0100 and flags & 0x000F == 0  # a response, RD echoed, NOERROR
    assert reply[12:12 + len(QUESTION)] == QUESTION
    answer = reply[12 + len(QUESTION):]
    assert answer[:10] == struct.pack("!HHHI", 0xC00C, 1, 1, 0)
    assert answer[10:] == struct.pack("!H", 4) + socket.inet_aton("127.0.0.1")


def test_garbage_is_formerr_or_dropped(responder: tuple[str, int]) -> None:
    # Too short for a header: dropped; the next datagram is still answered (the process lives on).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\x00\x01\x02", responder)
        s.sendto(struct.pack("!HHHHHH", 0xABCD, 0, 1, 0, 0, 0) + b"\x3f" + b"x" * 10, responder)
        reply = s.recv(4096)
    assert struct.unpack_from("!HHHHHH", reply) == (0xABCD, 0x8001, 0, 0, 0, 0)  # FORMERR, no question
