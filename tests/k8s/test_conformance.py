"""The Gateway API conformance regression gate: the upstream suite (v1.6.3, built from source by
tests/k8s/gatewayapi/build.sh --conformance) against a real edge, operator and connectors, exactly as
`scripts/conformance` runs it (tests/k8s/gatewayapi/conformance.py), compared with the committed report
docs/conformance/mproxy-report.yaml: a test that passed there and fails now, fewer passes, or a profile
that was conformant and is not any more fails this test. A run that passes more is fine: commit its
report (the test leaves it in the log directory) to claim it. Minutes long; it starts its own control
plane, so it shares nothing with the other k8s tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import need
from tests.k8s.gatewayapi.gate import regressions, summary

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "k8s" / "gatewayapi"
COMMITTED = REPO / "docs" / "conformance" / "mproxy-report.yaml"
CACHE = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy"))

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

SUITE_TIMEOUT = 45 * 60  # the whole suite: about 7 minutes on 2 cores


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
def test_no_claimed_conformance_regresses(tmp_path: Path) -> None:
    bins = CACHE / "gateway-api" / "bin"
    need((bins / "conformance.test").exists() and (bins / "echo-basic").exists(),
         f"the conformance suite in {bins} (tests/k8s/gatewayapi/build.sh --conformance)")
    committed = yaml.safe_load(COMMITTED.read_text())
    profiles = ",".join(p["name"] for p in committed["profiles"])
    report = tmp_path / "report.yaml"
    run = subprocess.run(
        [sys.executable, str(HERE / "conformance.py"), "--profiles", profiles, "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=SUITE_TIMEOUT, check=False,
    )
    tail = (run.stdout + run.stderr)[-4000:]
    assert report.exists(), f"the suite wrote no report (exit {run.returncode}):\n{tail}"
    new = yaml.safe_load(report.read_text())
    print(f"conformance: {summary(new)} (committed: {summary(committed)})\n{tail}")
    lost = regressions(committed, new)
    assert not lost, "conformance regressed against docs/conformance/mproxy-report.yaml:\n  " + \
        "\n  ".join(lost) + f"\n{tail}"
