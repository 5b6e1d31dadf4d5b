"""The udp scenario's report (docs/benchmarks/udp.md): its table and when it is written; the load generator's
cache name (it gained the dns subcommand). No benchmark runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mbench import stats, udp_report
from mbench.cli import parse_args
from mbench.udp import RATES

RESULT = {
    "plan": {"duration": 1.5}, "when": "2026-12-04 21:00 UTC", "runs": [{}, {}],
    "machine": {"cpu": "AMD EPYC", "cores": "2", "load": "1 1 1"},
    "versions": {"frp": "github.com/fatedier/frp v0.61.0", "mproxy": "git abc"},
    "errors": {"rathole/udp": "rathole-server exited with 1", "bore/restart": "no reconnect",
               "chisel": "not built"},
}


def _table() -> dict[str, dict[str, stats.Summary]]:
    runs = [{"direct": {"udp_dns_p50_ms": 0.02, "udp1000_loss_pct": 0.0},
             "mproxy": {"udp_dns_p50_ms": 0.2, "udp1000_loss_pct": 0.5},
             "frp": {"udp_dns_p50_ms": 0.3, "udp1000_loss_pct": 1.0}, "chisel": {"bulk1_mbps": 9.0}}]
    return stats.summarize_all(runs)


def test_the_table_has_a_row_per_udp_system_with_its_ratio_to_direct() -> None:
    text = udp_report.render(_table(), RESULT)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| **mproxy** | 0.200 (10x)" in rows["| **mproxy**"]
    assert "| frp | 0.300 (15x)" in rows["| frp"]
    assert "| direct loopback | 0.020 |" in rows["| direct loopback"]
    assert "| rathole" in rows  # it failed: a row of dashes, and why below
    assert "| chisel" not in rows  # no UDP variant
    assert f"answers/s at {RATES[-1]:,}/s" in text
    assert "- rathole: rathole-server exited with 1" in text
    assert "bore" not in text and "not built" not in text  # only the UDP scenario's errors
    assert "median of 2 run(s)" in text and "github.com/fatedier/frp v0.61.0" in text


def test_written_only_when_the_udp_scenario_ran() -> None:
    assert udp_report.measured(_table())
    assert not udp_report.measured(stats.summarize_all([{"direct": {"bulk1_mbps": 1.0}}]))


def test_udp_is_a_scenario_of_the_full_suite_and_can_run_alone() -> None:
    assert "udp" in parse_args([], env={"HOME": "/h"}).scenarios
    assert parse_args(["--scenarios", "udp"], env={"HOME": "/h"}).scenarios == ("udp",)


def test_the_load_generators_binary_is_named_by_its_sources(tmp_path: Path) -> None:
    from mbench.build import loadgen_digest

    (tmp_path / "main.go").write_text("package main\n")
    first = loadgen_digest(tmp_path)
    (tmp_path / "udp.go").write_text("package main\n")  # a checkout with one more file
    second = loadgen_digest(tmp_path)
    (tmp_path / "udp.go").write_text("package main // changed\n")
    assert len({first, second, loadgen_digest(tmp_path)}) == 3
    assert loadgen_digest(tmp_path) == loadgen_digest(tmp_path)
