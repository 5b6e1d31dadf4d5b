from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Processes and peers a test starts, closed when it ends, pass or fail (push_async_callback)."""
    async with contextlib.AsyncExitStack() as s:
        yield s
