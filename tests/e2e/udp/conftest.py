from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conftest import LOOPS, loop_policy

from .harness import Stack


@pytest.fixture(params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Both loops the roles may run on: their datagram transports differ (uvloop's is the production one)."""
    return loop_policy(request.param)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """An edge and a sidecar (see Stack.start); closed when the test ends, pass or fail."""
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        await s.close()
