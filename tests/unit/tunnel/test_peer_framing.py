"""Frames as the reference peers expect them (issue 11): `connection` alone in its message, pause/resume
with a decimal body, serviceport and name on end/error/pause/resume."""

from __future__ import annotations

from mproxy.codec import Address, Connection, End, Error, Message, Pause, Resume, parse_all
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler

A = Address("IPv4", "127.0.0.1", "57206")


def _mux() -> Multiplexer:
    return Multiplexer(limits=MuxLimits(), clock=lambda: 0.0)


def _control_and_two_streams(mux: Multiplexer) -> list[list[str]]:
    """A control message, then two streams that each write: the frame types of each message sent."""
    mux.send_control([1, "hello"])
    s = mux.open_stream(A, StreamHandler(), service="https", serviceport=443, name="app.test")
    s.write(b"\x16\x03\x01 client hello")
    other = mux.open_stream(Address("IPv4", "127.0.0.2", "1"), StreamHandler(), service="tcp")
    other.write(b"x")
    batches = []
    while mux.has_pending_output():
        batches.append([type(e).__name__ for e in parse_all(b"".join(mux.next_batch()))])
    return batches


async def test_a_connection_frame_ends_its_message_and_its_data_follows_in_the_next() -> None:
    mux = _mux()
    batches = _control_and_two_streams(mux)
    # Frames before a connection may share its message; nothing after it does.
    assert batches == [["Control", "Connection"], ["Connection"], ["Message", "Message"]]


async def test_toward_an_mproxy_sidecar_connection_frames_share_their_message_with_data() -> None:
    mux = _mux()
    mux.connection_ends_message = False  # the edge sets this when the upgrade carries X-Mproxy-Peer
    batches = _control_and_two_streams(mux)
    assert batches == [["Control", "Connection", "Connection", "Message", "Message"]]


async def test_pause_resume_end_error_carry_serviceport_name_and_a_count() -> None:
    mux = _mux()
    s = mux.open_stream(A, StreamHandler(), service="https", serviceport=443, name="app.test")
    mux.next_batch()
    s.pause_reading()  # nothing received yet: the body is "0", never empty
    s.bytes_in = 12059251
    s.resume_reading()
    s.write_eof()
    t = mux.open_stream(Address("IPv4", "127.0.0.3", "3"), StreamHandler(), service="tcp", serviceport=5050)
    t.abort("backend refused", "ECONNREFUSED")
    wire = b""
    while mux.has_pending_output():
        wire += b"".join(mux.next_batch())
    events = [e for e in parse_all(wire) if not isinstance(e, Connection)]
    pause, resume, error, end = events  # error is urgent; end waits behind the stream's data
    assert isinstance(pause, Pause) and isinstance(resume, Resume) and isinstance(end, End)
    assert isinstance(error, Error) and error.code == "ECONNREFUSED"
    assert (bytes(pause.data), bytes(resume.data)) == (b"0", b"12059251")
    for e in (pause, resume, end):
        assert (e.serviceport, e.name) == ("443", "app.test")
    assert (error.serviceport, error.name) == ("5050", "")
    assert not any(isinstance(e, Message) for e in events)
