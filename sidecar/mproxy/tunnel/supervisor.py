"""Supervision of a role's long-lived tasks (tunnel slots, flush loops, watchers, tunnel guards).

A task that raises must never die silently: `Supervised(name, kind, factory)` runs `await factory()`; if it
raises, the error is logged once (without a traceback unless at debug level), `on_crash(self)` is called
(count it in a metric, refresh readiness), and after a backoff (RESTART_INITIAL doubling to RESTART_CAP,
reset after a run of STABLE_SECONDS) a fresh `factory()` runs; `on_restart(self)` is called then.
`down` is True between a crash and its restart, `error` says why. A normal return ends supervision;
cancelling `task` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["RESTART_CAP", "RESTART_INITIAL", "Supervised"]

log = logging.getLogger("mproxy.supervisor")

RESTART_INITIAL = 0.5  # seconds before the first restart (jittered down to half)
RESTART_CAP = 30.0
STABLE_SECONDS = 30.0  # a run that lasted this long resets the backoff

Hook = Callable[["Supervised"], None]


class Supervised:
    def __init__(
        self,
        name: str,
        kind: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        on_crash: Hook | None = None,
        on_restart: Hook | None = None,
        initial: float | None = None,
        cap: float = RESTART_CAP,
    ) -> None:
        self.name = name  # for logs: "tunnel ws://edge:443/#0", "metrics flush loop"
        self.kind = kind  # a bounded metric label: "tunnel", "flush", "config_watcher", ...
        self._factory = factory
        self._on_crash = on_crash
        self._on_restart = on_restart
        self.initial = RESTART_INITIAL if initial is None else initial
        self.cap = cap
        self.restarts = 0
        self.down = False
        self.error: str | None = None
        self._rng = random.Random()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def _delay(self, failures: int) -> float:
        ceiling = min(self.cap, self.initial * 2.0 ** min(failures, 30))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                await self._factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loop.time() - started >= STABLE_SECONDS:
                    failures = 0
                delay = self._delay(failures)
                failures += 1
                self.restarts += 1
                self.down = True
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("%s failed (%s); restarting it in %.1f s", self.name, self.error, delay)
                log.debug("%s failed", self.name, exc_info=exc)
                self._call(self._on_crash)
            await asyncio.sleep(delay)
            self.down = False
            self._call(self._on_restart)

    def _call(self, hook: Hook | None) -> None:
        if hook is None:
            return
        try:
            hook(self)
        except Exception:  # a broken hook must not end supervision
            log.exception("supervision hook failed for %s", self.name)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
