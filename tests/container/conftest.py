"""The mproxy image run as the chart runs it, under podman.

``image`` (session scope) -> :class:`Image`: runs scripts/build-image (a no-op in seconds when nothing
changed: bases, layers and the archive are cached under ${MPROXY_CACHE:-~/.cache/mproxy}/image) and
returns the built image with a podman environment that reads only the cache's podman configuration.

``chart_security`` (session scope) -> the podman flags of the chart's own securityContext, read from
charts/mproxy/templates/_helpers.tpl, so the tests follow the chart when it changes.

``containers`` (function scope) -> :class:`Containers`: ``run(...)`` starts a detached container and
removes it (``podman rm -f``) after the test, whatever happened.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO_ROOT, need

BUILD_IMAGE = REPO_ROOT / "scripts" / "build-image"
HELPERS = REPO_ROOT / "charts" / "mproxy" / "templates" / "_helpers.tpl"
BUILD_TIMEOUT = 1800.0  # a cold build (two mmdebstrap bases, wheels from PyPI) takes minutes on 2 cores


@dataclass
class Image:
    ref: str
    image_id: str
    archive: Path
    size_bytes: int
    env: dict[str, str]
    pause_ref: str
    pause_archive: Path

    def podman(self, *args: str, timeout: float = 60, check: bool = True,
               input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """`podman ARGS` with the cache's configuration; a failure quotes podman's output."""
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, timeout=timeout,
                              input=input, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
                f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}")
        return proc


def _podman_env() -> dict[str, str]:
    out = subprocess.run([str(BUILD_IMAGE), "--env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for name, value in re.findall(r"^export (\w+)='([^']*)'$", out, re.M):
        env[name] = value
    return env


@functools.cache
def build_image() -> Image:
    """Run scripts/build-image (cached; once per session) and describe what it built; need() when a
    tool is missing."""
    for tool in ("podman", "runc", "mmdebstrap"):
        need(shutil.which(tool), f"{tool} is not installed (scripts/build-image installs it as root)")
    proc = subprocess.run([str(BUILD_IMAGE)], capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-image exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-5000:]}", pytrace=False)
    cache = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy")) / "image"
    values = dict(line.split("=", 1) for line in (cache / "mproxy.env").read_text().splitlines() if line)
    return Image(ref=values["IMAGE"], image_id=values["IMAGE_ID"], archive=Path(values["ARCHIVE"]),
                 size_bytes=int(values["SIZE_BYTES"]), env=_podman_env(),
                 pause_ref=values["PAUSE_IMAGE"], pause_archive=Path(values["PAUSE_ARCHIVE"]))


@pytest.fixture(scope="session")
def image() -> Image:
    return build_image()


def _template_yaml(name: str) -> dict[str, object]:
    """The body of `{{- define NAME -}}` in _helpers.tpl: plain YAML, no template actions."""
    text = HELPERS.read_text()
    match = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}\n(.*?)\{\{-? end -?\}\}', text, re.S)
    assert match, f"{name} is not defined in {HELPERS}"
    body = yaml.safe_load(match.group(1))
    assert isinstance(body, dict)
    return body


def security_flags(container: dict[str, object], pod: dict[str, object]) -> list[str]:
    """podman flags with the effect of a container and pod securityContext. A key this does not
    translate fails, so a new setting in the chart cannot be silently left out of these tests."""
    merged = {**pod, **container}
    flags: list[str] = []
    handled = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "allowPrivilegeEscalation",
               "readOnlyRootFilesystem", "privileged", "capabilities", "seccompProfile"}
    unknown = set(merged) - handled
    assert not unknown, f"securityContext keys with no podman translation here: {sorted(unknown)}"
    uid, gid = merged["runAsUser"], merged["runAsGroup"]
    assert merged["runAsNonRoot"] is True and isinstance(uid, int) and uid != 0
    flags.append(f"--user={uid}:{gid}")
    if "fsGroup" in merged:
        flags.append(f"--group-add={merged['fsGroup']}")
    if merged.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    if merged.get("readOnlyRootFilesystem") is True:
        # podman would mount writable tmpfs on /tmp, /var/tmp and /run; Kubernetes does not.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    assert merged.get("privileged") is False
    caps = merged.get("capabilities")
    assert isinstance(caps, dict) and set(caps) <= {"drop", "add"} and not caps.get("add")
    flags += [f"--cap-drop={cap}" for cap in caps["drop"]]
    seccomp = merged.get("seccompProfile")
    # podman applies its default seccomp profile unless told otherwise: that is RuntimeDefault.
    assert seccomp == {"type": "RuntimeDefault"}, seccomp
    return flags


@pytest.fixture(scope="session")
def chart_security() -> list[str]:
    return security_flags(_template_yaml("mproxy.containerSecurityContext"),
                          _template_yaml("mproxy.podSecurityContext"))


@dataclass
class Containers:
    image: Image
    security: list[str]
    names: list[str] = field(default_factory=list)

    def run(self, label: str, *args: str, volumes: dict[Path, str] | None = None) -> str:
        """Start `mproxy ARGS` detached on the host network, as the chart runs it (its securityContext,
        a 16 MiB tmpfs on /tmp like the chart's emptyDir); returns the container's name."""
        name = f"mproxy-test-{label}-{uuid.uuid4().hex[:8]}"
        mounts = [f"--volume={host}:{inside}:ro" for host, inside in (volumes or {}).items()]
        self.names.append(name)
        self.image.podman("run", "--detach", f"--name={name}", "--network=host",
                          "--tmpfs=/tmp:rw,size=16m,mode=1777", *self.security, *mounts,
                          self.image.ref, *args)
        return name

    def logs(self, name: str) -> str:
        proc = self.image.podman("logs", name, check=False)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def running(self, name: str) -> bool:
        proc = self.image.podman("inspect", "--format={{.State.Running}}", name, check=False)
        return proc.stdout.strip() == b"true"

    def stop(self, name: str, timeout: int = 10) -> int:
        """SIGTERM, wait up to `timeout` s; returns the exit code."""
        self.image.podman("stop", f"--time={timeout}", name, timeout=timeout + 30)
        proc = self.image.podman("inspect", "--format={{.State.ExitCode}}", name)
        return int(proc.stdout.strip())

    def remove_all(self) -> None:
        for name in self.names:
            self.image.podman("rm", "--force", "--time=0", name, check=False, timeout=60)


@pytest.fixture
def containers(image: Image, chart_security: list[str]) -> Iterator[Containers]:
    box = Containers(image, chart_security)
    try:
        yield box
    finally:
        box.remove_all()
