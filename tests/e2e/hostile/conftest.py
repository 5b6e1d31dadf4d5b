from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Processes and servers a test starts, closed when it ends (newest first), pass or fail."""
    async with contextlib.AsyncExitStack() as s:
        yield s
