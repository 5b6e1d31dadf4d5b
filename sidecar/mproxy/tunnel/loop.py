"""Run a role's main coroutine on uvloop when it is installed, else on the stdlib asyncio loop.

uvloop's transports write and read sockets in C: on a saturated tunnel it roughly doubles what one core
relays (see "Performance work" in docs/benchmarks/dataplane.md). Everything in mproxy works on the plain
asyncio loop too; `MPROXY_EVENT_LOOP=asyncio` forces it (to compare, or to rule uvloop out).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "loop_name", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default (no uvloop, or MPROXY_EVENT_LOOP=asyncio)."""
    if os.environ.get("MPROXY_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run(main), on the loop loop_factory() picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
