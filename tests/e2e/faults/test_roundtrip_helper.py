"""The sidecar suite's `tcp_roundtrip` when the relay closes first (a refused stream: E_LIMIT, E_NO_ROUTE).

The relay may reset the client before the helper has finished writing: the reset then surfaces from
`drain()` (ECONNRESET) or from `write_eof()` (ENOTCONN, errno 107: shutdown on a socket the peer already
reset). Either is the answer the test asked for, not an error of the helper.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from tests.e2e.sidecar.conftest import tcp_roundtrip

pytestmark = pytest.mark.e2e


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    conn.close()


@pytest.fixture
def resetting_server() -> Iterator[tuple[int, threading.Event]]:
    """Accepts, reads the first byte, then resets; in a thread, so it runs while the helper writes."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(1)
        _reset(conn)
        done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], done
    listener.close()
    thread.join(5)


async def test_reset_while_writing_is_an_answer(resetting_server) -> None:  # type: ignore[no-untyped-def]
    port, done = resetting_server
    # 32 MiB cannot fit in the socket buffers, so the reset lands while drain() waits
    assert await tcp_roundtrip(port, b"x" * (32 << 20)) == b""
    assert done.is_set()


async def test_reset_before_the_half_close_is_an_answer(resetting_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The exact failure seen in a clean clone: the reset arrives between drain() and write_eof()."""
    import asyncio

    port, done = resetting_server
    real_drain = asyncio.StreamWriter.drain

    async def drain_then_wait_for_the_reset(self: asyncio.StreamWriter) -> None:
        await real_drain(self)
        # Block the loop (no await) until the reset is in the kernel: the loop has not read it yet
        # when the helper calls write_eof(), the order seen in the clean clone.
        assert done.wait(5)
        time.sleep(0.05)

    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain_then_wait_for_the_reset)
    assert await tcp_roundtrip(port, b"third") == b""
