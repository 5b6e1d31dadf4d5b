"""Invariants of the one container image, read from /Containerfile (there is no container runtime here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "Containerfile"


def _stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_multi_stage_build() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder = " ".join(stages[0])
    assert re.search(r"FROM \S+ AS builder", stages[0][0], re.I)
    assert "pip install" in builder and "-c constraints.txt" in builder, "dependencies pinned"
    final = " ".join(stages[-1])
    assert "COPY --from=builder /opt/mproxy /opt/mproxy" in final, "the runtime takes the built tree"
    # Any base works, with or without pip (tests/container runs the real image): nothing is installed.
    assert "pip install" not in final, "the runtime stage installs nothing"


def test_final_stage_runs_as_non_root_65532() -> None:
    final = _stages()[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "USER must be set in the final stage"
    uid = users[-1].split(":")[0]
    assert uid == "65532", users[-1]


def test_no_build_tools_in_the_final_stage() -> None:
    final = " ".join(_stages()[-1]).lower()
    for tool in ("gcc", "build-essential", "make ", "g++", "clang", "apt-get install", "-dev "):
        assert tool not in final, f"{tool.strip()} must not be installed in the runtime stage"
    assert "pip uninstall -y pip" in final, "the runtime does not need pip after the install"


def test_entrypoint_is_the_mproxy_cli() -> None:
    final = _stages()[-1]
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT")]
    assert entry == ['ENTRYPOINT ["mproxy"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "mproxy" in scripts


def test_python_version_is_supported_by_the_project() -> None:
    match = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", CONTAINERFILE.read_text())
    assert match
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low = tuple(int(x) for x in re.findall(r"\d+", wanted)[:2])
    assert (int(match.group(1)), int(match.group(2))) >= low


def test_containerignore_keeps_only_the_sources() -> None:
    lines = [ln.strip() for ln in (ROOT / ".containerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", CONTAINERFILE.read_text(), re.M)
    for sources in copied:
        for src in sources.split():
            assert f"!{src}" in lines, f"{src} is copied but excluded by .containerignore"
