"""The built image itself: every role starts as the chart runs it (uid 65532, read-only root
filesystem, every capability dropped), nothing it needs is missing, and nothing it must not carry
(compilers, pip) is there."""

from __future__ import annotations

import json

import pytest

from .conftest import Image

pytestmark = pytest.mark.container

# The Debian base is ~125 MB and the pinned dependencies ~130 MB (docs/image.md); a jump past this
# means something unintended landed in the final stage.
SIZE_BUDGET_BYTES = 300_000_000


def run_as_chart(image: Image, security: list[str], *args: str, entrypoint: str | None = None,
                 check: bool = True) -> tuple[int, str]:
    """Run the image once with the chart's securityContext and no network; (exit code, output)."""
    flags = ["--rm", "--network=none", *security]
    if entrypoint:
        flags.append(f"--entrypoint={entrypoint}")
    proc = image.podman("run", *flags, image.ref, *args, check=check, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def test_the_image_is_configured_as_the_chart_expects(image: Image) -> None:
    config = json.loads(image.podman("image", "inspect", image.ref).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["mproxy"]
    assert config["WorkingDir"] == "/tmp"
    assert {"8080/tcp", "9090/tcp", "9443/tcp"} <= set(config["ExposedPorts"])
    print(f"image {image.ref} {image.image_id[:12]}: {image.size_bytes / 1e6:.0f} MB")
    assert image.size_bytes < SIZE_BUDGET_BYTES, f"{image.size_bytes / 1e6:.0f} MB"


@pytest.mark.parametrize(("args", "expect"), [
    (["--version"], "mproxy 0.1.0"),
    (["edge", "--help"], "--config"),
    (["sidecar", "--help"], "--config"),
    (["operator", "--help"], "usage: mproxy operator"),
])
def test_every_role_starts_as_uid_65532_read_only_without_capabilities(
        image: Image, chart_security: list[str], args: list[str], expect: str) -> None:
    code, out = run_as_chart(image, chart_security, *args)
    assert code == 0 and expect in out, out


def test_the_chart_security_context_is_really_in_force(image: Image, chart_security: list[str]) -> None:
    script = (
        "id -u; id -G; grep -E '^Cap(Prm|Eff|Bnd):' /proc/self/status; grep NoNewPrivs /proc/self/status;"
        " if touch /opt/mproxy/x 2>/dev/null || touch /x 2>/dev/null; then echo WRITABLE; fi"
    )
    _, out = run_as_chart(image, chart_security, "-c", script, entrypoint="/bin/sh")
    lines = out.split("\n")
    assert lines[0] == "65532", out
    assert "65532" in lines[1].split(), out
    assert "CapPrm:\t0000000000000000" in out and "CapEff:\t0000000000000000" in out, out
    assert "CapBnd:\t0000000000000000" in out, out
    assert "NoNewPrivs:\t1" in out, out
    assert "WRITABLE" not in out, out


def test_no_compiler_and_no_pip_in_the_final_stage(image: Image, chart_security: list[str]) -> None:
    code, out = run_as_chart(image, chart_security, "-c",
                             "which pip pip3 gcc cc c++ make; echo which=$?; python3 -m pip --version",
                             entrypoint="/bin/sh", check=False)
    first, rest = out.split("which=", 1)
    assert first.strip() == "", f"found in the image: {first}"
    assert rest.startswith("1"), out
    assert code != 0 and "No module named pip" in out, out


def test_every_mproxy_module_imports_in_the_image(image: Image, chart_security: list[str]) -> None:
    """A dependency missing from the final stage (or pruned from it) shows up here, not in a user's pod."""
    script = (
        "import importlib, pkgutil, mproxy, mproxy_operator\n"
        "names = [m.name for p in (mproxy, mproxy_operator)"
        " for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "for name in names:\n"
        "    if not name.endswith('.__main__'):  # that one runs the command line\n"
        "        importlib.import_module(name)\n"
        "import kopf, kubernetes, uvloop, cryptography, aiohttp\n"
        "print('imported', len(names))\n"
    )
    code, out = run_as_chart(image, chart_security, "-c", script, entrypoint="python3", check=False)
    assert code == 0 and out.startswith("imported "), out
    assert int(out.split()[1]) > 50, out
