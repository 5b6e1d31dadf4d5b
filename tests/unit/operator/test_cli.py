"""`mproxy operator` as a user meets it: options, and start-up errors that say what to do (no traceback)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mproxy_operator.logs import JsonFormatter
from mproxy_operator.options import parse


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mproxy", "operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_comes_from_the_operator() -> None:
    res = _run("--help")
    assert res.returncode == 0
    assert "--webhook-cert-secret" in res.stdout and "mproxy operator" in res.stdout


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    res = _run("--kubeconfig", str(tmp_path / "nope"), "--log-format", "text")
    assert res.returncode == 1
    assert "nope: no such file" in res.stderr and "Traceback" not in res.stderr


def test_unreachable_apiserver_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "secret-token-value"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    res = _run("--kubeconfig", str(config))
    assert res.returncode == 1
    assert "cannot reach the Kubernetes API" in res.stderr and "check --kubeconfig" in res.stderr
    assert "Traceback" not in res.stderr
    assert "secret-token-value" not in res.stderr  # never a credential in the logs
    line = json.loads(res.stderr.strip().splitlines()[-1])  # structured: one JSON object per line
    assert line["level"] == "error"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--webhook-listen", "9443"], "HOST:PORT"),
        (["--status-interval", "0"], "0.1-3600"),
        (["--native-sidecars", "maybe"], "invalid choice"),
    ],
)
def test_bad_options(args: list[str], problem: str) -> None:
    res = _run(*args)
    assert res.returncode == 2 and problem in res.stderr


def test_defaults() -> None:
    opts = parse([])
    assert opts.webhook_listen == ("0.0.0.0", 9443) and opts.webhook_hosts == ("127.0.0.1",)
    assert opts.http_listen == ("0.0.0.0", 8080) and opts.native_sidecars == "auto"
    assert parse(["--webhook-listen", "[::1]:9000"]).webhook_listen == ("::1", 9000)


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord(
        "mproxy_operator.x", logging.WARNING, __file__, 1, "tunnel %s: %s", ("a/b", "oops"), None
    )
    record.tunnel = "a/b"
    out = json.loads(JsonFormatter().format(record))
    assert out["level"] == "warning" and out["msg"] == "tunnel a/b: oops" and out["tunnel"] == "a/b"
    assert out["ts"].endswith("Z")
