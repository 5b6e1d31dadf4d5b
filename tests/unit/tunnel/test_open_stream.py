"""Opening a stream on the edge side: a header the codec refuses leaves nothing behind."""

from __future__ import annotations

import pytest

from mproxy.codec import Address, LocalProtocolError
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler


def test_a_refused_connection_header_registers_no_stream() -> None:
    mux = Multiplexer(limits=MuxLimits(), clock=lambda: 0.0)
    addr = Address("IPv4", "203.0.113.5", "54321")
    with pytest.raises(LocalProtocolError):
        mux.open_stream(addr, StreamHandler(), service="https", name="a" * 300)
    assert mux.streams == {}
    # The same client can still be opened with a header that fits.
    stream = mux.open_stream(addr, StreamHandler(), service="https", name="ok.example.com")
    assert list(mux.streams) == [addr.client_id] and stream.name == "ok.example.com"
