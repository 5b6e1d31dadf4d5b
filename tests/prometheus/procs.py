"""Start and always stop the outside processes of these tests, keeping their logs in files."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; its log ({self.log}):\n{self.tail()}")


@dataclass
class ProcGroup:
    """Processes started by one fixture; `stop()` ends each one it started, by pid, in reverse order."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        out = log.open("wb")
        popen = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(self, name: str, argv: Sequence[str], timeout: float = 30) -> str:
        """Run a short command to completion; its stdout, or an error carrying its output."""
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        (self.log_dir / f"{name}.log").write_text(result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"{name} exited with status {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)

    def tails(self) -> str:
        return "\n\n".join(f"--- {p.name} ({p.log}) ---\n{p.tail()}" for p in self.procs)
