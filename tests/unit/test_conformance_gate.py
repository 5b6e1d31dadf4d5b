"""The conformance regression gate's comparison (tests/k8s/gatewayapi/gate.py)."""

from __future__ import annotations

from typing import Any

from tests.k8s.gatewayapi.gate import regressions, summary


def report(**profiles: tuple[str, int, list[str]]) -> dict[str, Any]:
    return {"profiles": [
        {"name": name.replace("_", "-"), "core": {
            "result": result, "failedTests": failed,
            "statistics": {"Passed": passed, "Failed": len(failed), "Skipped": 0}}}
        for name, (result, passed, failed) in profiles.items()
    ]}


COMMITTED = report(GATEWAY_TCP=("success", 18, []), GATEWAY_HTTP=("failure", 32, ["A", "B"]))


def test_the_same_report_and_fixed_failures_are_not_regressions() -> None:
    assert regressions(COMMITTED, COMMITTED) == []
    better = report(GATEWAY_TCP=("success", 18, []), GATEWAY_HTTP=("failure", 33, ["B"]))
    assert regressions(COMMITTED, better) == []


def test_a_new_failure_a_lost_pass_or_a_lost_success_is() -> None:
    worse = report(GATEWAY_TCP=("failure", 17, ["TCPRouteX"]), GATEWAY_HTTP=("failure", 31, ["A", "B", "C"]))
    assert regressions(COMMITTED, worse) == [
        "GATEWAY-TCP core: TCPRouteX fails (it passed in the committed report)",
        "GATEWAY-TCP core: 17 tests passed, 18 before",
        "GATEWAY-TCP core: result 'failure', was 'success'",
        "GATEWAY-HTTP core: C fails (it passed in the committed report)",
        "GATEWAY-HTTP core: 31 tests passed, 32 before",
    ]


def test_a_profile_missing_from_the_new_run_is_a_regression() -> None:
    only_tcp = report(GATEWAY_TCP=("success", 18, []))
    assert regressions(COMMITTED, only_tcp) == ["GATEWAY-HTTP: missing from the new report"]
    assert summary(COMMITTED) == "GATEWAY-TCP core success 18/18; GATEWAY-HTTP core failure 32/34"
