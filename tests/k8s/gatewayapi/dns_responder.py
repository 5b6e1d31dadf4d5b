"""A minimal DNS responder over UDP, standing in for the conformance suite's `coredns` pod (its UDPRoute
test asks a Gateway for `foo.bar.com. A` and wants any DNS reply): `python dns_responder.py PORT`.

Like coredns's `whoami` plugin it answers every query with the query's ID and question and an A
record of the asking client's address (what this process sees: the connector's). Anything that is not
a query with one question is answered FORMERR when it has a header, else dropped. Runs until killed.
"""

from __future__ import annotations

import socket
import struct
import sys

HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
MAX_NAME = 255


def _question_end(msg: bytes, at: int) -> int | None:
    """The offset just past the question at `at` (name, type, class), or None if malformed."""
    length = 0
    while at < len(msg):
        n = msg[at]
        if n == 0:
            end = at + 1 + 4
            return end if end <= len(msg) else None
        if n & 0xC0 or length + n + 1 > MAX_NAME:  # no compression in a question; names are bounded
            return None
        length += n + 1
        at += 1 + n
    return None


def answer(msg: bytes, client_ip: str) -> bytes | None:
    """The reply to one datagram, or None to drop it (no DNS header at all)."""
    if len(msg) < HEADER.size:
        return None
    qid, flags, qdcount, _an, _ns, _ar = HEADER.unpack_from(msg)
    rd = flags & 0x0100
    opcode = flags & 0x7800
    end = _question_end(msg, HEADER.size) if qdcount == 1 and not flags & 0x8000 else None
    if end is None or opcode:
        return HEADER.pack(qid, 0x8000 | opcode | rd | 1, 0, 0, 0, 0)  # FORMERR, no question
    question = msg[HEADER.size:end]
    qtype, qclass = struct.unpack_from("!HH", question, len(question) - 4)
    records = b""
    if qtype in (1, 255) and qclass == 1:  # A or ANY, class IN: the client's address
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(client_ip)
    flags_out = 0x8000 | 0x0400 | rd  # QR, AA, RD as asked; NOERROR
    return HEADER.pack(qid, flags_out, 1, 1 if records else 0, 0, 0) + question + records


def main() -> int:
    port = int(sys.argv[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))  # all addresses, like the pod it stands in for
        print(f"dns responder on udp {port}", flush=True)
        while True:
            msg, peer = sock.recvfrom(4096)
            reply = answer(msg, peer[0])
            if reply is not None:
                sock.sendto(reply, peer)


if __name__ == "__main__":
    sys.exit(main())
