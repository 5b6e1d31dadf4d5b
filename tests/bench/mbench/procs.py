"""Starting, watching and stopping the measured processes (loopback only)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_error_line(text: str) -> str | None:
    for line in _ANSI.sub("", text).splitlines():
        if "error" in line.lower():
            return line.strip()[:300]
    return None


class BenchError(RuntimeError):
    """A system could not be started or measured; the message says why."""


@contextlib.contextmanager
def recorded(errors: MutableMapping[str, str], name: str, scen: str,
             log: Callable[[str], None]) -> Iterator[None]:
    """Record a failure of `scen` on system `name` as errors["name/scen"] and carry on: a harness bug must
    not lose the other systems' results."""
    try:
        yield
    except BenchError as exc:
        errors.setdefault(f"{name}/{scen}", str(exc))
        log(f"  {name}: {scen} failed: {exc}")
    except Exception as exc:
        errors.setdefault(f"{name}/{scen}", f"harness error: {type(exc).__name__}: {exc}")
        log(f"  {name}: {scen}: harness error: {exc!r}")


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for us and every child (10,000 idle streams need ~20,000 descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            continue
    return soft


def wait_port(port: int, timeout: float = 15.0, proc: Proc | None = None) -> None:
    """Wait until 127.0.0.1:port accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _children(pid: int) -> list[int]:
    """Every descendant of pid (from /proc), so a role that forks is measured whole."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of pid and its descendants, in KiB."""
    total = 0
    for p in _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Proc:
    """One child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logdir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = logdir / f"{name}.log"
        logdir.mkdir(parents=True, exist_ok=True)
        self._logf = self.log.open("ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else self._logf,
            stderr=self._logf,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # so stop() ends the whole group and nothing else
        )
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 800) -> str:
        """The end of the log on one line, without terminal colour codes."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        text = _ANSI.sub("", text)
        return text[-n:].strip().replace("\n", " | ")

    def first_error(self) -> str:
        """The first log line that names an error (a crash's cause precedes its backtrace), else the tail."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return first_error_line(text) or self.tail(300)

    def stop(self, grace: float = 3.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader is gone; make sure none of its group lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._logf.close()
