from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await rig(**options)`: a started Rig; every process and proxy it started is stopped at the end."""
    made: list[Rig] = []

    async def make(**options: Any) -> Rig:
        r = Rig(tmp_path, **options)
        made.append(r)
        return await r.start()

    yield make
    for r in made:
        with contextlib.suppress(Exception):
            await r.close()
