"""Urgent frames (control, error replies, pause/resume) are bounded in count and in bytes; replies quote at
most 64 characters of the peer's text; a reply that cannot be packed is dropped, never raised."""

from __future__ import annotations

from typing import Any

import pytest

from mproxy.codec import Address, pack_control, pack_data
from mproxy.codec.control import Request as Req
from mproxy.codec.control import unknown_command
from mproxy.tunnel import ControlChannel, Multiplexer, MuxLimits, Stream, StreamHandler
from mproxy.tunnel.mux import TunnelOverflow
from mproxy.tunnel.urgent import UrgentQueue


def test_the_queue_refuses_past_either_bound_and_counts_bytes() -> None:
    q = UrgentQueue(max_frames=3, max_bytes=10)
    assert q.push(b"aaaa") and q.push(b"bbbb")
    assert not q.push(b"ccc")  # 11 bytes
    assert q.push(b"cc") and q.nbytes == 10
    assert not q.push(b"")  # a 4th frame
    assert q.popleft() == b"aaaa" and q.nbytes == 6
    q.appendleft(b"a")  # a writer putting a frame back
    assert q.nbytes == 7 and q.popleft() == b"a" and q.nbytes == 6
    q.clear()
    assert q.nbytes == 0 and not q


async def test_control_messages_past_the_byte_budget_fail_the_tunnel() -> None:
    mux = Multiplexer(limits=MuxLimits(max_urgent_bytes=4096), clock=lambda: 0.0)
    for i in range(1000):
        mux.send_control([-i, None])
    assert mux.failure is not None and "flood" in mux.failure
    assert mux._urgent_q.nbytes <= 4096
    assert await mux.wait_failed() == mux.failure


async def test_replies_provoked_while_feeding_raise_overflow_and_stop_there() -> None:
    seen: list[object] = []

    def on_control(value: object) -> None:
        seen.append(value)
        mux.send_control(["a reply longer than its request"])

    mux = Multiplexer(on_control=on_control, limits=MuxLimits(max_urgent_bytes=200), clock=lambda: 0.0)
    with pytest.raises(TunnelOverflow):
        mux.feed(b"".join(pack_control([i, "x"]) for i in range(1, 100)))
    assert len(seen) < 10  # the rest of the input was not processed
    mux.feed(pack_control([500, "x"]))  # nor is anything later
    assert len(seen) < 10


async def test_error_replies_are_bounded_in_bytes_too() -> None:
    mux = Multiplexer(limits=MuxLimits(max_urgent_bytes=2000), clock=lambda: 0.0)  # accepts nothing
    wire = b"".join(pack_data(Address("IPv4", "9.9.9.9", str(i)), b"x", service="tcp") for i in range(200))
    with pytest.raises(TunnelOverflow):
        mux.feed(wire)
    assert mux._urgent_q.nbytes <= 2000


async def test_an_unpackable_reply_is_dropped_and_counted() -> None:
    mux = Multiplexer(clock=lambda: 0.0)
    # The peer's header is 255 bytes; ours (",error" and a 2-digit datalen) would not fit.
    # A long address, not a long port: the parser refuses a port that is not canonical 0-65535.
    address = "9" * (255 - len("IPv4,,1,1,tcp,,"))
    frame = pack_data(Address("IPv4", address, "1"), b"x", service="tcp")
    mux.feed(frame)
    assert mux.replies_dropped == 1 and not mux._urgent_q and mux.failure is None
    mux.feed(frame)  # remembered as closed: dropped without trying again
    assert mux.replies_dropped == 1


async def test_a_stream_whose_replies_cannot_be_packed_is_never_opened() -> None:
    opened: list[Any] = []

    def accept(stream: Stream) -> StreamHandler:
        opened.append(stream)
        return StreamHandler()

    mux = Multiplexer(on_stream=accept, implicit_open=True, clock=lambda: 0.0)
    # A long address, not a long port: the parser refuses a port that is not canonical 0-65535.
    address = "9" * (255 - len("IPv4,,1,1,tcp,,"))
    mux.feed(pack_data(Address("IPv4", address, "1"), b"x", service="tcp"))
    assert not opened and not mux.streams and mux.replies_dropped == 1


def test_an_unknown_command_is_quoted_to_64_characters() -> None:
    sent: list[Any] = []
    channel = ControlChannel(sent.append)
    channel.feed([7, "z" * 10_000])
    message = sent[0][1]["message"]
    assert sent[0][0] == -7 and sent[0][1]["code"] == "E_UNKNOWN_COMMAND"
    assert len(message) <= len("unknown command ''") + 64 and message.endswith("...'"), message
    assert unknown_command(Req(3, "short", ()))[1]["message"] == "unknown command 'short'"
