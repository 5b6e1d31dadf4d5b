"""py-spy profiles of the mproxy roles: record collapsed stacks, then summarize them (pure part)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Hot:
    function: str
    self_pct: float
    total_pct: float


def parse_collapsed(lines: Iterable[str]) -> tuple[Counter[str], Counter[str], int]:
    """From `frame;frame;... count` lines: self and inclusive sample counts per frame, and the total."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    total = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_c[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            total_c[f] += n
    return self_c, total_c, total


def _short(frame: str) -> str:
    """`func (path/to/mod.py:12)` -> `func (mod.py)`: the line number varies, the function is the point."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    if "site-packages" in parts:
        where = "/".join(parts[parts.index("site-packages") + 1 :])
    elif "mproxy" in parts:
        where = "/".join(parts[parts.index("mproxy") :])
    else:
        where = parts[-1]
    return f"{name} ({where})" if where else name


def top(lines: Iterable[str], n: int = 12) -> list[Hot]:
    self_c, total_c, total = parse_collapsed(lines)
    if not total:
        return []
    return [Hot(f, 100 * c / total, 100 * total_c[f] / total) for f, c in self_c.most_common(n)]


def top_inclusive(lines: Iterable[str], n: int = 12, prefix: str = "mproxy/") -> list[Hot]:
    """mproxy's own functions by inclusive time (where, in our code, the samples were)."""
    self_c, total_c, total = parse_collapsed(lines)
    if not total:
        return []
    # The entry frames (module, CLI main) cover everything and say nothing.
    ours = [(f, c) for f, c in total_c.items()
            if prefix in f and "mproxy/cli/" not in f and "mproxy/__main__" not in f]
    ours.sort(key=lambda fc: -fc[1])
    return [Hot(f, 100 * self_c[f] / total, 100 * c / total) for f, c in ours[:n]]


def record(py_spy: Path, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start `py-spy record` in raw (collapsed) format on pid for `seconds`; the caller waits."""
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def markdown(title: str, lines: list[str]) -> str:
    hot = top(lines, 10)
    ours = top_inclusive(lines, 10)
    if not hot:
        return f"**{title}**: no samples."
    out = [f"**{title}** — self time (share of all samples):", "", "| function | self % | incl. % |",
           "|---|---:|---:|"]
    out += [f"| `{h.function}` | {h.self_pct:.1f} | {h.total_pct:.1f} |" for h in hot]
    if ours:
        out += ["", "mproxy functions by inclusive time:", "", "| function | incl. % | self % |",
                "|---|---:|---:|"]
        out += [f"| `{h.function}` | {h.total_pct:.1f} | {h.self_pct:.1f} |" for h in ours]
    return "\n".join(out)
