"""`mproxy demo` as the README runs it: a subprocess that starts everything, sends traffic and exits."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_traffic_through_edge_and_sidecar() -> None:
    out = subprocess.run([sys.executable, "-m", "mproxy", "demo", "--duration", "5", "--free-ports"],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    final = [line for line in text.splitlines() if "traffic:" in line][-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (ok|failed)", final) if k == "failed"}
    assert counts == {"failed": 0}, final
    for service in ("https", "http", "tcp"):
        n = int(re.search(rf"{service} (\d+) ok", final).group(1))  # type: ignore[union-attr]
        assert n >= 3, final
    assert "tunnels serving demo.localhost: 2" in text
    pattern = r"(https|http|tcp)\s+client connections ok (\d+)"
    ok = {m.group(1): int(m.group(2)) for m in re.finditer(pattern, text)}
    assert all(v >= 3 for v in ok.values()) and set(ok) == {"https", "http", "tcp"}, ok
    assert "curl --cacert" in text and "--resolve secure.demo.localhost:" in text
    assert "-H 'Host: www.demo.localhost'" in text
    assert "Traceback" not in out.stderr


def test_demo_says_what_to_do_when_a_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1] - 443  # the demo's https port lands on the taken one
        if not 1024 <= base <= 64000:
            pytest.skip("ephemeral port outside the --base-port range")
        out = subprocess.run([sys.executable, "-m", "mproxy", "demo", "--duration", "1", "--base-port",
                              str(base)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--free-ports" in out.stdout and "Traceback" not in out.stderr + out.stdout


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "mproxy", "demo", "--free-ports"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "traffic:" not in seen:  # wait for the first progress line
            assert time.monotonic() < deadline, seen
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            seen += line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, out + err
        assert "Metrics summary" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
