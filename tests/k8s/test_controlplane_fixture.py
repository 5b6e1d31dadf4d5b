"""The `kube` fixture itself: a failing test names the kept log directory, and nothing is left running.

Runs a nested pytest session in a subprocess (its own control plane) with one passing and one
deliberately failing test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

NESTED_CONFTEST = "from tests.k8s.conftest import *  # noqa: F403  (fixtures and the report hook)\n"
NESTED_TESTS = """
def test_passes(kube):
    assert kube.kubectl("get", "nodes", "-o", "name").stdout.split() == [
        "node/kwok-node-0", "node/kwok-node-1"
    ]

def test_fails_on_purpose(kube):
    assert kube.kubectl("get", "namespace", "default").returncode == 0
    with open("admin-token", "w") as f:
        f.write(kube.admin_token)
    raise AssertionError("deliberate failure")
"""


def _processes_using(work_dir: str) -> list[str]:
    """Command lines of live processes that mention the nested session's work directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if work_dir in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_a_failing_test_reports_and_keeps_the_logs_and_teardown_stops_everything(
    kube: Any, tmp_path: Path
) -> None:
    # `kube` only makes this test skip (or fail in CI) the same way when the binaries are missing.
    (tmp_path / "conftest.py").write_text(NESTED_CONFTEST)
    (tmp_path / "test_nested.py").write_text(NESTED_TESTS)
    env = {k: v for k, v in os.environ.items() if k not in ("MPROXY_K8S_KEEP_LOGS", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "1 failed, 1 passed" in out, out

    # The failure report names the log directory, and the session end says it was kept.
    named = re.search(r"component logs: (/\S+)", out)
    kept = re.search(r"kubernetes control plane logs kept in (/\S+)", out)
    assert named and kept, out
    log_dir = Path(named.group(1))
    assert log_dir == Path(kept.group(1))
    try:
        logs = {p.name for p in log_dir.iterdir()}
        assert {
            "etcd.log",
            "kube-apiserver.log",
            "kube-controller-manager.log",
            "kube-scheduler.log",
            "kwok.log",
        } <= logs
        assert "Serving securely" in (log_dir / "kube-apiserver.log").read_text(errors="replace")
        # The logs stay; the data, keys, tokens and kubeconfigs go, and no log holds the token.
        assert [p.name for p in log_dir.parent.iterdir()] == [log_dir.name]
        admin_token = (tmp_path / "admin-token").read_text()
        assert len(admin_token) == 32
        for log in log_dir.iterdir():
            assert admin_token not in log.read_text(errors="replace"), log
        assert _processes_using(str(log_dir.parent)) == []
    finally:
        shutil.rmtree(log_dir.parent, ignore_errors=True)


def test_a_component_that_cannot_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.k8s import conftest as fixture

    fixture._binaries_ready()  # skip (or fail in CI) like the other k8s tests without binaries
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Every "free" port is one that is taken: etcd cannot bind its client port.
        monkeypatch.setattr(fixture, "free_port", lambda: taken.getsockname()[1])
        cluster = fixture.KubeCluster(work_dir=tmp_path, log_dir=tmp_path / "logs")
        try:
            with pytest.raises(fixture.ControlPlaneError) as info:
                cluster.start()
            message = str(info.value)
            assert message.startswith("etcd exited with code 1; logs in ")
            assert "address already in use" in message  # the log tail is quoted
            assert fixture._port_clash(cluster)  # what makes the fixture retry with new ports
        finally:
            cluster.stop()
    assert _processes_using(str(tmp_path)) == []
