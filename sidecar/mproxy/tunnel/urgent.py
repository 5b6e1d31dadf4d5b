"""The multiplexer's queue of urgent frames (control, connection, error, pause/resume), bounded in count and
bytes.

These frames go out before any stream data, and most of them are provoked by the peer (error replies,
control replies), so a peer that sends requests and never reads could otherwise grow this queue without
limit (it did: ~170 MB/s on the edge). `push()` refuses a frame that would pass either bound; the caller
then closes the tunnel. The deque's own append/appendleft/popleft keep the byte
count, so the writer's loop is unchanged.
"""

from __future__ import annotations

from collections import deque

__all__ = ["UrgentQueue"]


class UrgentQueue(deque[bytes]):
    __slots__ = ("max_bytes", "max_frames", "nbytes")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.nbytes = 0

    def push(self, frame: bytes) -> bool:
        """Queue `frame`; False (and nothing queued) when it would pass the count or the byte bound."""
        if len(self) >= self.max_frames or self.nbytes + len(frame) > self.max_bytes:
            return False
        self.append(frame)
        return True

    # The plain deque operations keep `nbytes` right (unbounded: the bound is push()'s), so a writer that
    # puts a frame back (appendleft) stays consistent.
    def append(self, frame: bytes) -> None:
        super().append(frame)
        self.nbytes += len(frame)

    def appendleft(self, frame: bytes) -> None:
        super().appendleft(frame)
        self.nbytes += len(frame)

    def popleft(self) -> bytes:
        frame = super().popleft()
        self.nbytes -= len(frame)
        return frame

    def clear(self) -> None:
        super().clear()
        self.nbytes = 0
