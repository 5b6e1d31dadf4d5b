"""The multiplexer's dispatch as playbooks: peer frames and local calls in, exact frames and callbacks out.

No WebSocket, no event loop: a fake clock, mux.feed() and mux.next_batch() (see playbook.py)."""

from __future__ import annotations

import pytest
from tests.unit.tunnel.playbook import (
    A,
    B,
    C,
    Playbook,
    accepted,
    connection,
    data,
    drain,
    end,
    error,
    got,
    on,
    open_stream,
    pause,
    resume,
    sweep,
    tick,
    together,
    write,
)

from mproxy.tunnel import MuxLimits, StreamEnd
from mproxy.tunnel.end import CLEAN

NO_CONN = "no matching connection"


def test_accepted_stream_data_pause_resume_and_end_both_ways() -> None:
    pb = Playbook()
    assert (
        pb
        >> connection(A, "https", "443", "example.com")
        << accepted(A, "https")
        >> data(A, b"hello", "https", "443", "example.com")
        << got("data_received", A, b"hello")
        >> write(A, b"world")
        << data(A, b"world", "https", "443", "example.com")
        >> pause(A, 5)
        << got("pause_writing", A)
        >> write(A, b"still queued")  # a peer's pause stops the producer, not what it already wrote
        << data(A, b"still queued", "https", "443", "example.com")
        >> pause(A, 5)  # a second pause changes nothing
        >> resume(A, 17)
        << got("resume_writing", A)
        >> end(A)
        << got("eof_received", A)
        >> on(A, "write_eof")
        << got("stream_closed", A, CLEAN)  # both ends sent: closed as the end frame is packed
        << end(A, "443", "example.com")
        >> data(A, b"late", "https")  # after the close: dropped, not answered
    )
    assert pb.mux is not None and pb.mux.pauses_received == 2 and not pb.mux.streams


def test_opened_stream_flow_control_both_ways_and_local_end_first() -> None:
    pb = Playbook(accept=False)
    assert (
        pb
        >> open_stream(A, "https", "443", "example.com")
        << connection(A, "https", "443", "example.com")
        >> write(A, b"GET /")
        << data(A, b"GET /", "https", "443", "example.com")
        >> data(A, b"HTTP/1.1 200", "https")
        << got("data_received", A, b"HTTP/1.1 200")
        >> on(A, "pause_reading")
        << pause(A, 12, "443", "example.com")  # the count is the bytes received so far
        >> on(A, "pause_reading")  # already paused: no second frame
        >> on(A, "resume_reading")
        << resume(A, 12, "443", "example.com")
        >> on(A, "write_eof")
        << end(A, "443", "example.com")
        >> data(A, b" OK", "https")  # half-closed: the peer may still send
        << got("data_received", A, b" OK")
        >> end(A)
        << got("eof_received", A)
        << got("stream_closed", A, CLEAN)
    )


def test_errors_either_way_close_the_stream() -> None:
    assert (
        Playbook()
        >> connection(A, "tcp")
        << accepted(A, "tcp")
        >> error(A, "connection reset", "ECONNRESET")
        << got("error_received", A, "connection reset", "ECONNRESET")
        << got("stream_closed", A, StreamEnd(origin="peer", code="ECONNRESET", message="connection reset"))
        >> connection(B, "tcp")
        << accepted(B, "tcp")
        >> together(write(B, b"dropped by the abort"), on(B, "abort", "backend refused", "ECONNREFUSED"))
        << got("stream_closed", B, StreamEnd(origin="local", code="ECONNREFUSED", message="backend refused"))
        << error(B, "backend refused", "ECONNREFUSED")
    )


def test_frames_for_an_unknown_client_are_answered_once() -> None:
    assert (
        Playbook()
        >> data(A, b"who?", "https")
        << error(A, NO_CONN, "E_NO_CONN")
        >> data(A, b"again", "https")  # remembered: not answered twice
        >> pause(B)
        << error(B, NO_CONN, "E_NO_CONN")
        >> end(C)  # nothing to answer for an end or an error
        >> error(C, "gone", "E_CONN_CLOSED")
    )


def test_implicit_open_accepts_data_for_an_unknown_client() -> None:
    assert (
        Playbook(implicit_open=True)
        >> data(A, b"old relay", "https")
        << accepted(A, "https")
        << got("data_received", A, b"old relay")
    )


@pytest.mark.parametrize(("limits", "message"), [
    (MuxLimits(max_streams=1), "too many streams in this tunnel (limit 1)"),
    (MuxLimits(max_streams_per_client=1),
     "too many streams from this client address (limit 1; IPv6 per /64)"),
], ids=["per-tunnel", "per-client"])
def test_streams_over_a_limit_are_refused_and_the_tunnel_carries_on(limits: MuxLimits, message: str) -> None:
    pb = Playbook(limits=limits)
    assert (
        pb
        >> connection(A, "https")
        << accepted(A, "https")
        >> connection(B, "https")
        << error(B, message, "E_LIMIT")
        >> data(A, b"still served", "https")
        << got("data_received", A, b"still served")
    )
    assert pb.mux is not None and pb.mux.refused == {"E_LIMIT": 1}


def test_a_peer_that_accepts_no_streams_refuses_them() -> None:
    assert (
        Playbook(accept=False)
        >> connection(A, "https")
        << error(A, "this peer does not accept streams", "E_NO_SERVICE")
    )


def test_draining_refuses_new_streams_and_keeps_open_ones() -> None:
    assert (
        Playbook()
        >> connection(A, "https")
        << accepted(A, "https")
        >> drain()
        >> connection(B, "https")
        << error(B, "this tunnel is shutting down, retry on another", "E_SHUTTING_DOWN")
        >> data(A, b"in flight", "https")
        << got("data_received", A, b"in flight")
    )


def test_the_idle_sweep_closes_only_streams_idle_past_the_timeout() -> None:
    assert (
        Playbook(limits=MuxLimits(idle_timeout=60))
        >> connection(A, "tcp")
        << accepted(A, "tcp")
        >> tick(30)
        >> connection(B, "tcp")
        << accepted(B, "tcp")
        >> tick(30)
        >> sweep()  # A idle exactly 60 s: not past the timeout
        >> tick(0.5)
        >> sweep()
        << got("stream_closed", A, StreamEnd(origin="local", code="E_IDLE",
                                             message="idle for more than 60 s"))
        << error(A, "idle for more than 60 s", "E_IDLE")
        >> data(B, b"active", "tcp")  # activity at 1060.5: B is not idle at 1119.5
        << got("data_received", B, b"active")
        >> tick(59)
        >> sweep()
    )


def test_a_playbook_that_does_not_match_names_the_step() -> None:
    pb = Playbook() >> connection(A, "https") << accepted(A, "tcp")
    wrong = r"XX expected << call accepted\(IPv4,203.0.113.7,50001, 'tcp'\)"
    with pytest.raises(AssertionError, match=wrong):
        bool(pb)
