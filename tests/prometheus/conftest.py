"""Fixtures: promtool, and a real Prometheus scraping real mproxy processes on loopback.

The Prometheus server is session-scoped (one start for the whole directory) and always terminated. Its
log, its config and the logs of every mproxy process stay in pytest's temp dir, and a failing test
gets their tails in its report.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import pytest
import yaml
from tests.conftest import need
from tests.ports import free_port
from tests.prometheus.harness import PrometheusAPI, alert_files, wait_for
from tests.prometheus.procs import ProcGroup
from tests.prometheus.stack import Stack, start_stack

SCRAPES_BEFORE = 2  # samples before any traffic, so that rate() sees the first burst as an increase

_LOG_GROUPS: list[ProcGroup] = []


def _prometheus_tool(name: str) -> str:
    path = shutil.which(name)
    need(path, f"{name} is not on PATH (scripts/install-prometheus installs Debian's prometheus)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _prometheus_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _prometheus_tool("prometheus")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A backend, an edge relay and a sidecar on loopback, routing app.test through the tunnel."""
    group = ProcGroup(tmp_path_factory.mktemp("mproxy-stack"))
    _LOG_GROUPS.append(group)
    try:
        yield start_stack(group)
    finally:
        group.stop()


@pytest.fixture(scope="session")
def prometheus(
    prometheus_bin: str, stack: Stack, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusAPI]:
    """A real Prometheus that has scraped the stack before, between and after two bursts of traffic.

    Two bursts, because a labelled series is born with its first sample: rate() over it is positive only
    when a later burst moves it again while Prometheus watches.
    """
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        # The shipped alert rules load too: a rule whose expression fails on real data shows as unhealthy.
        "rule_files": [str(p) for p in alert_files()],
        "scrape_configs": [
            {"job_name": job, "static_configs": [
                # The labels the chart's PodMonitor adds in a cluster; dashboards and alerts group by them.
                {"targets": [target], "labels": {
                    "namespace": "mproxy-test", "pod": f"{job}-{i}",
                    **({"tunnel": stack.tunnels[target]} if target in stack.tunnels else {}),
                }}
                for i, target in enumerate(targets)
            ]}
            for job, targets in stack.targets.items()
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    group = ProcGroup(work)
    _LOG_GROUPS.append(group)
    proc = group.start("prometheus", [
        prometheus_bin, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        f"--web.console.templates={work}", f"--web.console.libraries={work}",
    ])
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    n_targets = sum(len(t) for t in stack.targets.values())

    def scrapes() -> int:
        """The fewest successful scrapes of any target so far."""
        proc.check_alive()
        stack.check_alive()
        result = api.query("sum by (job, instance) (count_over_time(up[5m]) * (up == 1))")
        if result.get("status") != "success" or len(result["data"]["result"]) < n_targets:
            return 0
        return min(int(float(r["value"][1])) for r in result["data"]["result"])

    def wait_scrapes(more: int) -> None:
        want = scrapes() + more
        wait_for(lambda: scrapes() >= want, 20, f"{more} more successful scrapes of every mproxy target")

    try:
        def ready() -> bool:
            proc.check_alive()  # raises, with its log, if Prometheus died
            return api.ready()

        wait_for(ready, 20, "Prometheus to become ready")
        wait_scrapes(SCRAPES_BEFORE)
        stack.drive_traffic()
        wait_scrapes(2)
        stack.drive_traffic()
        wait_scrapes(2)
        # Keep the traffic going while the tests query: a panel's rate() over 1m, or an alert's window,
        # must not run dry when a loaded machine takes over a minute to reach it.
        keep_driving = _KeepDriving(stack)
        yield api
        keep_driving.stop()
    finally:
        group.stop()


class _KeepDriving:
    """A burst of the stack's traffic every few seconds on a thread of its own, until stop()."""

    def __init__(self, stack: Stack, every: float = 5.0) -> None:
        self._stack = stack
        self._every = every
        self._done = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="keep-driving", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                self._stack.drive_traffic()
            except BaseException as exc:  # reported by stop(), on the test thread
                self.errors.append(exc)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        assert not self.errors, f"background traffic failed: {self.errors[0]!r}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if getattr(report, "failed", False) and _LOG_GROUPS:
        for group in _LOG_GROUPS:
            report.sections.append((f"logs in {group.log_dir}", group.tails()))  # type: ignore[attr-defined]
    return report

