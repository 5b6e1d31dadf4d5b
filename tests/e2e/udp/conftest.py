from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import Stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """An edge and a sidecar (see Stack.start); closed when the test ends, pass or fail."""
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        await s.close()
