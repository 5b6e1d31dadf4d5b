from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import Cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Edges, sidecars, DNS and balancer started through this are stopped when the test ends."""
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(tmp_path, stack)
