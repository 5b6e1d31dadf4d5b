"""Load a config file and watch it for changes; shared by both roles.

Kubernetes updates a ConfigMap volume by swapping a `..data` symlink, so inotify on the file itself misses
changes. The watcher therefore polls: it resolves the path, then compares (resolved path, mtime, size) and
only when those move re-reads the file and compares a SHA-256 of its content. A file whose new content is
invalid is refused (logged) and the previous config stays in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from mproxy.config.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("mproxy.config")


def read_config_text(path: str | os.PathLike[str]) -> str:
    """Read a config file; an unreadable file is a ConfigError that says which file and why."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {os.fspath(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read config file {os.fspath(path)!r}: {exc}") from None


def load_file(path: str | os.PathLike[str], parse: Callable[[str], T]) -> T:
    """Read and validate a config file; ConfigError messages are prefixed with the file name."""
    text = read_config_text(path)
    try:
        return parse(text)
    except ConfigError as exc:
        raise ConfigError(exc.path, f"{exc.problem} (in {os.fspath(path)})") from None


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except OSError:
        return None
    return (str(real), st.st_mtime_ns, st.st_size)


class ConfigWatcher(Generic[T]):
    """Polls a config file and calls `on_change(new_config)` when its content changes and validates."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[str], T],
        on_change: Callable[[T], None],
        *,
        interval: float = 2.0,
        on_error: Callable[[ConfigError], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._on_error = on_error
        self._parse = parse
        self._on_change = on_change
        self.interval = interval
        self._key = _stat_key(self.path)
        self._digest = self._hash()
        self._applied = self._digest
        self.reloads = 0
        self.rejected = 0
        self.last_error: str | None = None

    def _hash(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> bool:
        """One poll; returns True when a new config was applied."""
        key = _stat_key(self.path)
        if key is None or key == self._key:
            return False
        self._key = key
        digest = self._hash()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        if digest == self._applied:  # back to the config in force (e.g. after a refused edit)
            self.last_error = None
            return False
        try:
            new = load_file(self.path, self._parse)
        except ConfigError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            log.error("config reload refused, keeping the previous config: %s", exc)
            if self._on_error is not None:
                self._on_error(exc)
            return False
        self.last_error = None
        self._applied = digest
        self.reloads += 1
        self._on_change(new)
        log.info("config reloaded from %s", self.path)
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # a bug in on_change must not kill the watcher
                log.exception("config reload failed")
