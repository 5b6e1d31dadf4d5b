"""What edge replicas sign for each other: grants requests and answers, forward TLVs, the replay guard.
Every tampered byte, another key, a stale time and a second use are refused with their reason."""

from __future__ import annotations

import pytest

from mproxy import proxyproto
from mproxy.edge.peer_auth import FORWARD_TLV, ForwardClaim, PeerAuthError, PeerKeys, ReplayGuard

KEYS = PeerKeys(b"shared secret", skew=10.0)
NOW = 1_800_000_000.0
SRC, DST = ("198.51.100.7", 51234), ("10.0.0.5", 443)
CLAIM = ForwardClaim("tls", 443, "app.example.com", "edge-1", int(NOW * 1000))


def reason(call: object) -> str:
    assert callable(call)
    with pytest.raises(PeerAuthError) as info:
        call()
    return info.value.reason


def test_request_round_trip_and_refusals() -> None:
    header = KEYS.sign_request("edge-1", NOW)
    assert KEYS.verify_request(header, NOW + 9) == ("edge-1", str(int(NOW * 1000)))
    assert reason(lambda: KEYS.verify_request(header, NOW + 11)) == "stale"
    assert reason(lambda: KEYS.verify_request(header, NOW - 11)) == "stale"
    assert reason(lambda: PeerKeys(b"other").verify_request(header, NOW)) == "bad_auth"
    edge_id, ts, mac = header.split(" ")
    assert reason(lambda: KEYS.verify_request(f"edge-2 {ts} {mac}", NOW)) == "bad_auth"  # id is signed
    assert reason(lambda: KEYS.verify_request(f"{edge_id} {int(ts) + 1} {mac}", NOW)) == "bad_auth"
    for bad in (None, "", "a b", "a b c d", "edge x" + " " + mac, f"e {'9' * 16} {mac}"):
        assert reason(lambda bad=bad: KEYS.verify_request(bad, NOW)) == "bad_auth"


def test_answer_is_bound_to_the_request_time_and_body() -> None:
    sig = KEYS.sign_answer("123", b'{"id":"a"}')
    KEYS.verify_answer("123", b'{"id":"a"}', sig)
    assert reason(lambda: KEYS.verify_answer("124", b'{"id":"a"}', sig)) == "bad_auth"  # an old answer
    assert reason(lambda: KEYS.verify_answer("123", b'{"id":"b"}', sig)) == "bad_auth"
    assert reason(lambda: KEYS.verify_answer("123", b'{"id":"a"}', None)) == "bad_auth"


def test_the_grants_key_and_the_forward_key_differ() -> None:
    # A MAC made for one use is never accepted for the other (each key is derived with its own label).
    assert KEYS.sign_answer("1", b"x") != PeerKeys(b"shared secret").forward_tlv(SRC, DST, CLAIM)[-32:].hex()


def test_forward_tlv_round_trip_through_a_proxy_header() -> None:
    tlv = KEYS.forward_tlv(SRC, DST, CLAIM)
    header = proxyproto.decode(proxyproto.encode_v2(SRC, DST, [(FORWARD_TLV, tlv)]) + b"\x16\x03\x01")
    assert isinstance(header, proxyproto.ProxyHeader) and header.tlvs == ((FORWARD_TLV, tlv),)
    assert header.source is not None and header.destination is not None
    assert KEYS.verify_forward(header.source, header.destination, tlv, NOW + 1) == CLAIM
    tcp = ForwardClaim("tcp", 7022, "", "e", int(NOW * 1000))
    assert KEYS.verify_forward(SRC, DST, KEYS.forward_tlv(SRC, DST, tcp), NOW) == tcp


def test_forward_tlv_refusals() -> None:
    tlv = KEYS.forward_tlv(SRC, DST, CLAIM)
    assert reason(lambda: KEYS.verify_forward(("198.51.100.8", 51234), DST, tlv, NOW)) == "bad_auth"
    assert reason(lambda: KEYS.verify_forward(SRC, ("10.0.0.5", 444), tlv, NOW)) == "bad_auth"
    assert reason(lambda: PeerKeys(b"other").verify_forward(SRC, DST, tlv, NOW)) == "bad_auth"
    assert reason(lambda: KEYS.verify_forward(SRC, DST, tlv, NOW + 10.5)) == "stale"
    for i in range(len(tlv)):  # every single flipped byte
        bad = bytearray(tlv)
        bad[i] ^= 0x40
        assert reason(lambda bad=bad: KEYS.verify_forward(SRC, DST, bytes(bad), NOW)) == "bad_auth"
    assert reason(lambda: KEYS.verify_forward(SRC, DST, tlv[:40], NOW)) == "bad_header"
    assert reason(lambda: KEYS.verify_forward(SRC, DST, b"", NOW)) == "bad_header"


def test_replay_guard_refuses_a_second_use_and_stays_bounded() -> None:
    guard = ReplayGuard(window=10.0, max_entries=100)
    guard.check(b"a" * 32, 0.0)
    assert reason(lambda: guard.check(b"a" * 32, 5.0)) == "replay"
    guard.check(b"a" * 32, 25.0)  # out of the window: the timestamp check refuses it already
    for i in range(1000):
        guard.check(i.to_bytes(32, "big"), 30.0)
    assert len(guard) <= 100


def test_a_scoped_forward_carries_the_group_and_the_tls_refusal() -> None:
    scoped = ForwardClaim("tls", 443, "app.example.com", "edge-1", int(NOW * 1000), "gw-a", False)
    tlv = KEYS.forward_tlv(SRC, DST, scoped)
    assert tlv[0] == 2 and KEYS.verify_forward(SRC, DST, tlv, NOW) == scoped
    grouped = ForwardClaim("tcp", 5432, "", "e", int(NOW * 1000), "gw-b")
    assert KEYS.verify_forward(SRC, DST, KEYS.forward_tlv(SRC, DST, grouped), NOW) == grouped
    closing = ForwardClaim("tls", 443, "x.test", "e", int(NOW * 1000), None, False)
    assert KEYS.verify_forward(SRC, DST, KEYS.forward_tlv(SRC, DST, closing), NOW) == closing
    assert KEYS.forward_tlv(SRC, DST, CLAIM)[0] == 1  # no group, alert: version 1, as older edges read
    for i in range(len(tlv)):  # every single flipped byte of a version 2 TLV
        bad = bytearray(tlv)
        bad[i] ^= 0x40
        assert reason(lambda bad=bad: KEYS.verify_forward(SRC, DST, bytes(bad), NOW)) == "bad_auth"


def test_a_scoped_forward_with_a_bad_group_or_length_is_refused() -> None:
    import struct
    import time

    def signed(fields: bytes) -> bytes:
        return fields + KEYS._forward_mac(SRC, DST, fields)

    head = struct.pack("!BQBH", 2, int(time.time() * 1000), 1, 443)
    now = time.time()
    assert reason(lambda: KEYS.verify_forward(SRC, DST, signed(head + b"\x00\x03a b\x01x\x01e"), now)
                  ) == "bad_header"  # "a b" is no group name
    assert reason(lambda: KEYS.verify_forward(SRC, DST, signed(head + b"\x00\x09gw\x01x\x01e"), now)
                  ) == "bad_header"  # the group's length runs past the end
    unknown = signed(struct.pack("!BQBH", 3, 0, 1, 443) + b"\x00" * 4)  # a version 3
    assert reason(lambda: KEYS.verify_forward(SRC, DST, unknown, now)) == "bad_header"
