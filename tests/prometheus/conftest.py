"""Fixtures: promtool, and a real Prometheus scraping real mproxy processes on loopback.

The Prometheus server is session-scoped (one start for the whole directory) and always terminated. Its
log, its config and the logs of every mproxy process stay in pytest's temp dir, and a failing test
gets their tails in its report.
"""

from __future__ import annotations

import shutil

import pytest
from tests.conftest import need
from tests.prometheus.procs import ProcGroup

_LOG_GROUPS: list[ProcGroup] = []


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    need(path, "promtool is not on PATH (scripts/install-prometheus installs Debian's prometheus)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    need(path, "prometheus is not on PATH (scripts/install-prometheus installs Debian's prometheus)")
    assert path is not None
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if getattr(report, "failed", False) and _LOG_GROUPS:
        for group in _LOG_GROUPS:
            report.sections.append((f"logs in {group.log_dir}", group.tails()))  # type: ignore[attr-defined]
    return report

