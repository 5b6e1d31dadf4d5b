"""The multiplexer's queue of urgent frames (control, connection, error, pause/resume), bounded in count and
bytes.

These frames go out before any stream data, and most of them are provoked by the peer (error replies,
control replies), so a peer that sends requests and never reads could otherwise grow this queue without
limit (it did: ~170 MB/s on the edge). `push()` refuses a frame that would pass either bound; the caller
then closes the tunnel. `popleft()` is the plain deque's, with the byte count kept, so the writer's loop
is unchanged.
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
        self.nbytes += len(frame)
        return True

    def popleft(self) -> bytes:
        frame = super().popleft()
        self.nbytes -= len(frame)
        return frame

    def clear(self) -> None:
        super().clear()
        self.nbytes = 0
