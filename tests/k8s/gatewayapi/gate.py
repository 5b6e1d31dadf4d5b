"""The conformance regression gate (pure): what a new ConformanceReport lost against the committed one.

docs/conformance/mproxy-report.yaml is the claim: for each profile, its core (and extended) result, how
many tests passed and which failed. A new run regresses when, in any committed profile, a test fails that
the committed report does not list as failed, fewer tests pass, or a result that was `success` is not any
more. Fixing a failure is never a regression (commit the new report to claim it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["regressions", "summary"]


def _by_profile(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(p.get("name")): p for p in report.get("profiles") or []}


def _parts(profile: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {k: profile[k] for k in ("core", "extended") if isinstance(profile.get(k), Mapping)}


def regressions(committed: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per regression; empty when the new report keeps every claim of the committed one."""
    out: list[str] = []
    now = _by_profile(new)
    for name, was in _by_profile(committed).items():
        got = now.get(name)
        if got is None:
            out.append(f"{name}: missing from the new report")
            continue
        new_parts = _parts(got)
        for part, before in _parts(was).items():
            after = new_parts.get(part)
            if after is None:
                out.append(f"{name} {part}: missing from the new report")
                continue
            allowed = set(before.get("failedTests") or [])
            for test in sorted(set(after.get("failedTests") or []) - allowed):
                out.append(f"{name} {part}: {test} fails (it passed in the committed report)")
            passed_before = int((before.get("statistics") or {}).get("Passed") or 0)
            passed_after = int((after.get("statistics") or {}).get("Passed") or 0)
            if passed_after < passed_before:
                out.append(f"{name} {part}: {passed_after} tests passed, {passed_before} before")
            if before.get("result") == "success" and after.get("result") != "success":
                out.append(f"{name} {part}: result {after.get('result')!r}, was 'success'")
    return out


def summary(report: Mapping[str, Any]) -> str:
    """`GATEWAY-TCP core success 18/18; ...` for logs and notes."""
    items = []
    for name, profile in _by_profile(report).items():
        for part, body in _parts(profile).items():
            st = body.get("statistics") or {}
            passed, failed = int(st.get("Passed") or 0), int(st.get("Failed") or 0)
            items.append(f"{name} {part} {body.get('result')} {passed}/{passed + failed}")
    return "; ".join(items)
