"""Builds what the suite runs, all outside git under the cache dir: the Go load generator, the peers
(by package name from the Go module proxy and crates.io, at pinned versions) and a throwaway venv for
plotting and profiling. Builds run under `nice -n 19`, one at a time: the CPU is shared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mbench.procs import BenchError


@dataclass(frozen=True, slots=True)
class Recipe:
    kind: str  # "go" or "cargo"
    name: str  # module path or crate name
    version: str
    packages: tuple[str, ...]  # go: packages to install; cargo: unused
    binaries: tuple[str, ...]

    def commands(self, root: Path) -> list[list[str]]:
        """The install commands, as a person would type them."""
        if self.kind == "go":
            return [["go", "install", *(f"{p}@{self.version}" for p in self.packages)]]
        return [["cargo", "install", self.name, "--version", self.version, "--root", str(root)]]


PEERS: dict[str, Recipe] = {
    "chisel": Recipe("go", "github.com/jpillora/chisel", "v1.10.1", ("github.com/jpillora/chisel",),
                     ("chisel",)),
    "frp": Recipe("go", "github.com/fatedier/frp", "v0.61.0",
                  ("github.com/fatedier/frp/cmd/frps", "github.com/fatedier/frp/cmd/frpc"), ("frps", "frpc")),
    "rathole": Recipe("cargo", "rathole", "0.5.0", (), ("rathole",)),
    "bore": Recipe("cargo", "bore-cli", "0.6.0", (), ("bore",)),
}
VENV_PACKAGES = ("matplotlib", "py-spy")


def _run_logged(argv: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 1800) -> int:
    full = dict(os.environ)
    full.update(env or {})
    with log.open("ab") as f:
        f.write(("$ " + " ".join(argv) + "\n").encode())
        f.flush()
        try:
            return subprocess.run(["nice", "-n", "19", *argv], stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                  env=full, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            f.write(b"timed out\n")
            return 124


def _tail(log: Path, n: int = 6) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def build_peer(name: str, cache: Path) -> str | None:
    """Build one peer unless built; return None when ready, else the error to report."""
    recipe = PEERS[name]
    root = cache / "peers"
    bindir = root / "bin"
    if all((bindir / b).is_file() for b in recipe.binaries):
        return None
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    bindir.mkdir(parents=True, exist_ok=True)
    if recipe.kind == "go":
        if not shutil.which("go"):
            return "go is not on PATH"
        env = {"GOBIN": str(bindir), "GOFLAGS": "-buildvcs=false"}
        rc = _run_logged(recipe.commands(root)[0], log, env=env)
        if rc != 0:
            # `go install m@v` also asks the proxy for the module's version list (to warn about
            # deprecation); where that list is refused, install the same pinned version from a
            # throwaway module that requires it.
            mod = root / "gomod" / name
            mod.mkdir(parents=True, exist_ok=True)
            gomod = f"module peerbuild\n\ngo 1.22\n\nrequire {recipe.name} {recipe.version}\n"
            (mod / "go.mod").write_text(gomod)
            env["GOFLAGS"] += " -mod=mod"
            rc = _run_logged(["go", "install", *recipe.packages], log, cwd=mod, env=env)
    else:
        if not shutil.which("cargo"):
            return "cargo is not on PATH"
        rc = _run_logged(recipe.commands(root)[0], log)
    if rc != 0 or not all((bindir / b).is_file() for b in recipe.binaries):
        return f"build failed (exit {rc}): {_tail(log)}"
    return None


def loadgen_digest(src: Path) -> str:
    """A hash of the load generator's sources: its binary's name in the cache."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_loadgen(repo: Path, cache: Path) -> Path:
    # Named by the sources' hash, not checked by mtime: checkouts of different revisions (git worktrees)
    # share the cache, and one's newer binary must not pass for another's (a subcommand it lacks).
    src = repo / "tests" / "bench" / "loadgen"
    out = cache / "bench" / "bin" / f"loadgen-{loadgen_digest(src)}"
    if out.is_file():
        return out
    if not shutil.which("go"):
        raise BenchError("go is not on PATH; the load generator is written in Go (tests/bench/loadgen)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    res = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=src, capture_output=True, text=True,
                         env={**os.environ, "GOFLAGS": "-buildvcs=false"}, timeout=600, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"building tests/bench/loadgen failed: {res.stderr.strip()[-500:]}")
    os.replace(tmp, out)  # whole or not at all, for a run from another checkout at the same time
    return out


def tool_venv(cache: Path) -> Path | None:
    """A throwaway venv (never the project's) with matplotlib and py-spy; None if it cannot be made."""
    venv = cache / "bench" / "venv"
    py = venv / "bin" / "python"
    stamp = venv / ".ready"
    if stamp.is_file():
        return py
    log = cache / "bench" / "venv.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if _run_logged([sys.executable, "-m", "venv", str(venv)], log) != 0:
        return None
    if _run_logged([str(py), "-m", "pip", "install", "--quiet", *VENV_PACKAGES], log) != 0:
        print(f"bench: tool venv failed: {_tail(log)}", file=sys.stderr)
        return None
    stamp.touch()
    return py
