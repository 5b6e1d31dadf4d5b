from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import Parts


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    """Start edges, backends and devices through this; they are closed when the test ends, pass or fail."""
    async with contextlib.AsyncExitStack() as stack:
        yield Parts(tmp_path, stack)
