"""The benchmark harness's pure parts: statistics, argument parsing, table rendering, goal checks,
restart timing and profile parsing. No benchmark runs here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mbench import report, stats
from mbench.cli import SCENARIOS, SYSTEMS, parse_args
from mbench.profile import parse_collapsed, top, top_inclusive
from mbench.scenarios import restart_metrics

# ---- statistics ----

def test_median_odd_even_and_empty() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert stats.median([]) is None
    assert stats.median([float("nan"), 5.0]) == 5.0


def test_percentile_interpolates_and_checks_range() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert stats.percentile(xs, 50) == pytest.approx(50.5)
    assert stats.percentile(xs, 99) == pytest.approx(99.01)
    assert stats.percentile(xs, 0) == 1.0
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        stats.percentile(xs, 101)


def test_ratio_is_taken_within_each_run_then_medianed() -> None:
    runs = [
        {"direct": {"tput": 1000.0}, "mproxy": {"tput": 300.0}},
        {"direct": {"tput": 500.0}, "mproxy": {"tput": 200.0}},  # a slow round: direct slowed too
        {"direct": {"tput": 1000.0}, "mproxy": {"tput": 250.0}},
    ]
    s = stats.summarize(runs, "mproxy", "tput")
    assert s.median == 250.0
    assert (s.low, s.high, s.runs) == (200.0, 300.0, 3)
    # per-run ratios 0.3, 0.4, 0.25: median 0.3, not 250 / median(direct) = 0.25
    assert s.ratio == pytest.approx(0.3)


def test_summary_skips_failed_runs_and_zero_baselines() -> None:
    runs: list[dict[str, dict[str, float | None]]] = [
        {"direct": {"x": 0.0}, "frp": {"x": 5.0}},
        {"direct": {"x": 10.0}, "frp": {"x": None}},
        {"direct": {"x": 10.0}},
    ]
    s = stats.summarize(runs, "frp", "x")
    assert (s.median, s.runs, s.ratio) == (5.0, 1, None)
    all_ = stats.summarize_all(runs)
    assert set(all_) == {"direct", "frp"}
    assert all_["direct"]["x"].ratio == pytest.approx(1.0)


# ---- argument parsing ----

def test_defaults_are_the_full_suite() -> None:
    o = parse_args([], env={"HOME": "/h"})
    assert o.systems == SYSTEMS and o.scenarios == SCENARIOS
    assert (o.runs, o.duration, o.idle_streams, o.quick) == (3, 2.5, 10000, False)
    assert o.cache == Path("/h/.cache/mproxy")
    assert o.write and o.build and not o.profile


def test_quick_shrinks_and_cache_follows_env() -> None:
    o = parse_args(["--quick"], env={"MPROXY_CACHE": "/c", "HOME": "/h"})
    assert (o.runs, o.duration, o.idle_streams) == (1, 1.5, 1000)
    assert o.cache == Path("/c")
    o = parse_args(["--quick", "--runs", "2", "--idle-streams", "50"], env={})
    assert (o.runs, o.idle_streams) == (2, 50)


def test_direct_is_always_measured() -> None:
    o = parse_args(["--systems", "mproxy,frp"], env={})
    assert o.systems == ("direct", "mproxy", "frp")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--systems", "mproxy,ngrok"], "unknown system ngrok"),
        (["--scenarios", "bulk1,fast"], "unknown scenario fast"),
        (["--runs", "0"], "positive"),
        (["--duration", "abc"], "positive"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, env={})
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_csv_type_rejects_empty() -> None:
    from mbench.cli import _csv

    with pytest.raises(argparse.ArgumentTypeError, match="none given"):
        _csv(SYSTEMS, "system")(" , ")


# ---- rendering ----

def _table() -> dict[str, dict[str, stats.Summary]]:
    runs = [
        {
            "direct": {"bulk1_mbps": 3000.0, "connrate_per_s": 5000.0, "lat_p50_ms": 0.1},
            "mproxy": {"bulk1_mbps": 600.0, "connrate_per_s": 900.0, "lat_p50_ms": 0.5,
                       "loaded_p99_x_idle": 2.0, "idle_edge_kib_per_stream": 12.0,
                       "idle_device_kib_per_stream": 20.0, "restart_s": 0.3,
                       "restart_after_listen_s": 0.6},
            "reference": {"bulk1_mbps": 250.0, "lat_p50_ms": 0.9},
            "frp": {"bulk1_mbps": 700.0, "connrate_per_s": 800.0},
            "bore": {"bulk1_mbps": 180.0, "connrate_per_s": 1000.0},
        }
    ]
    return stats.summarize_all(runs)


def test_fmt() -> None:
    assert report.fmt(None) == "—"
    assert report.fmt(12345.6) == "12,346"
    assert report.fmt(123.4) == "123"
    assert report.fmt(1.23456, 3) == "1.235"


def test_results_table_shows_values_ratios_and_failures() -> None:
    text = report.results_table(_table(), ["direct", "mproxy", "chisel"], {"chisel": "build failed"})
    lines = text.splitlines()
    assert lines[0].startswith("| system | 1 stream MB/s")
    assert len(lines) == 5
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    direct = next(line for line in lines if line.startswith("| direct"))
    assert "3,000" in direct and "x)" not in direct  # the baseline carries no ratio
    mproxy = next(line for line in lines if "mproxy" in line)
    assert "600 (0.20x)" in mproxy
    assert "0.30" in mproxy  # restart seconds
    chisel = next(line for line in lines if line.startswith("| chisel"))
    assert set(chisel.replace("|", "").split()) == {"chisel", "—"}


def test_goals_compare_against_best_peer_and_reference() -> None:
    goals = {g.text: g for g in report.goals(_table())}
    best = goals["1-stream throughput ≥ best peer"]
    assert best.met is False and "frp" in best.target  # 600 < frp's 700
    assert goals["1-stream throughput ≥ 20% of direct"].met is True  # exactly 0.20
    assert goals["1-stream throughput ≥ 2x the reference system"].met is True  # 600 >= 500
    assert goals["adds less latency than the reference (p50)"].met is True
    assert goals["interactive p99 under bulk ≤ 3x idle p99"].met is True
    assert goals["memory per idle stream, edge"].met is True
    assert goals["memory per idle stream, sidecar"].met is False
    assert goals["traffic flows again after an edge restart (from the new edge's spawn)"].met is True
    assert goals["... from the moment the new edge accepts connections"].met is False
    assert goals["new streams per second ≥ best peer"].met is False  # 900 < bore's 1000
    rendered = report.goals_table(report.goals(_table()))
    assert "**missed**" in rendered and "| met |" in rendered


def test_goals_unmeasured_when_mproxy_absent() -> None:
    table = stats.summarize_all([{"direct": {"bulk1_mbps": 1.0}}])
    assert all(g.met is None for g in report.goals(table))


def test_render_has_machine_and_sections() -> None:
    text = report.render(
        table=_table(), systems=["direct", "mproxy"], errors={"bore": "no reconnect"},
        mach={"cpu": "AMD EPYC", "cores": "2", "kernel": "6.1", "python": "3.11.2", "go": "go1.26",
              "rust": "1.95.0", "node": "20.20.2", "load": "1 1 1"},
        runs=3, plan={"duration": 3.0, "rate": 200.0, "idle_streams": 10000, "connrate_workers": 8},
        versions={"mproxy": "git abc"}, when="2026-11-25 10:00 UTC",
        figures=[("throughput.png", "Throughput")],
    )
    assert "AMD EPYC, 2 cores" in text
    assert "median of 3 run(s)" in text
    assert "![Throughput](throughput.png)" in text
    assert "- bore: no reconnect" in text
    assert "## mproxy's goals" in text


def test_cpu_model() -> None:
    assert report.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert report.cpu_model("") == "unknown"


# ---- restart timing ----

def test_restart_metrics_from_probe_attempts() -> None:
    s = 1_000_000_000
    gone, spawned = 10.0, 10.1
    attempts = [
        {"start": 9 * s, "end": 9 * s + 1000, "stage": "ok"},  # before the stop: ignored
        {"start": int(10.05 * s), "end": int(10.06 * s), "stage": "dial"},
        {"start": int(10.3 * s), "end": int(10.31 * s), "stage": "echo"},  # listening, no tunnel yet
        {"start": int(10.5 * s), "end": int(10.6 * s), "stage": "ok"},
        {"start": int(10.7 * s), "end": int(10.71 * s), "stage": "ok"},
    ]
    m = restart_metrics(attempts, gone, spawned, 8.0)
    assert m["restart_s"] == pytest.approx(0.5)
    assert m["restart_after_listen_s"] == pytest.approx(0.3)


def test_restart_metrics_without_recovery() -> None:
    m = restart_metrics([{"start": 11 * 10**9, "end": 11 * 10**9, "stage": "dial"}], 10.0, 10.1, 8.0)
    assert m == {"restart_s": None, "restart_not_recovered_after_s": 8.0}


# ---- profiles ----

COLLAPSED = [
    "<module> (mproxy/__main__.py:1);run (asyncio/base_events.py:10);_read (mproxy/tunnel/mux.py:40) 60",
    "<module> (mproxy/__main__.py:1);run (asyncio/base_events.py:10);select (selectors.py:468) 30",
    "<module> (mproxy/__main__.py:1);feed (/x/sidecar/mproxy/codec/parser.py:12) 10",
    "garbage line without count",
    "",
]


def test_parse_collapsed_counts_self_and_inclusive() -> None:
    self_c, total_c, total = parse_collapsed(COLLAPSED)
    assert total == 100
    assert self_c["_read (mproxy/tunnel/mux.py)"] == 60
    assert total_c["run (base_events.py)"] == 90
    assert total_c["<module> (mproxy/__main__.py)"] == 100


def test_top_and_top_inclusive() -> None:
    hot = top(COLLAPSED, 2)
    assert [h.function for h in hot] == ["_read (mproxy/tunnel/mux.py)", "select (selectors.py)"]
    assert hot[0].self_pct == pytest.approx(60.0)
    ours = top_inclusive(COLLAPSED, 5)
    # the entry frame covers everything and is left out; our own functions remain
    assert [h.function for h in ours] == ["_read (mproxy/tunnel/mux.py)", "feed (mproxy/codec/parser.py)"]
    assert ours[0].total_pct == pytest.approx(60.0)
    assert top([], 3) == []


def test_valid_runs_drop_idle_figures_of_a_dead_process() -> None:
    runs = [{"bore": {"idle_edge_rss_mib": 0.0, "idle_edge_kib_per_stream": -0.4,
                      "idle_device_rss_mib": 12.0, "idle_device_kib_per_stream": 3.0, "bulk1_mbps": 9.0}}]
    clean = stats.valid_runs(runs)
    assert "idle_edge_kib_per_stream" not in clean[0]["bore"]
    assert clean[0]["bore"]["idle_device_kib_per_stream"] == 3.0
    assert clean[0]["bore"]["bulk1_mbps"] == 9.0
    assert "idle_edge_kib_per_stream" in runs[0]["bore"]  # the input is left alone


def test_render_option_takes_a_results_file() -> None:
    o = parse_args(["--render", "r.json"], env={})
    assert o.render == Path("r.json")
    assert parse_args([], env={}).render is None


def test_first_error_line_finds_the_cause_before_the_backtrace() -> None:
    from mbench.procs import first_error_line

    log = "\x1b[2mstarting\x1b[0m\nError: Too many open files (os error 24)\nStack backtrace:\n  0: main\n"
    assert first_error_line(log) == "Error: Too many open files (os error 24)"
    assert first_error_line("all good\n") is None


def test_results_table_says_when_a_system_missed_runs() -> None:
    runs = [{"direct": {"bulk1_mbps": 1.0}, "mproxy": {"bulk1_mbps": 0.5}}, {"direct": {"bulk1_mbps": 1.0}}]
    text = report.results_table(stats.summarize_all(runs), ["direct", "mproxy"], {}, runs=2)
    assert "**mproxy** (1 of 2 runs)" in text
    assert "direct loopback |" in text and "direct loopback (" not in text


# ---- several edges ----

def test_split_spreads_workers_and_streams_over_the_edges() -> None:
    from mbench.scenarios import split

    assert split(8, 3) == [3, 3, 2]
    assert split(1, 3) == [1, 0, 0]
    assert split(8, 1) == [8]
    assert sum(split(17, 5)) == 17


def test_three_edges_share_the_first_entry_as_public_port(tmp_path: Path) -> None:
    import yaml
    from mbench.systems import Context, MproxyEdges

    from mproxy.config.edge import load_edge_config
    from mproxy.config.sidecar import load_sidecar_config

    repo = Path(__file__).resolve().parents[3]
    ctx = Context(repo=repo, cache=tmp_path, work=tmp_path, loadgen=tmp_path / "loadgen")
    system = MproxyEdges(ctx, backend_port=9)
    edges = [load_edge_config(yaml.safe_load(c.read_text())) for c in system.confs]
    assert [e.listeners[0].public_port for e in edges] == [system.entry] * 3
    assert sorted({e.tunnel.listen for e in edges}) == sorted(f"127.0.0.1:{c}" for c in system.controls)
    sidecar = load_sidecar_config(yaml.safe_load(system.sidecar_conf.read_text()))
    assert sidecar.edge.urls == tuple(f"ws://127.0.0.1:{c}/" for c in system.controls)


def test_round2_goals_compare_ratios_added_latency_and_peers() -> None:
    runs = [{
        "direct": {"connrate_per_s": 10000.0, "lat_p50_ms": 0.1},
        "mproxy": {"connrate_per_s": 2000.0, "lat_p50_ms": 0.3, "bulk1_mbps": 900.0, "loaded_p99_ms": 2.0,
                   "loaded_p99_x_idle": 3.0, "idle_edge_kib_per_stream": 7.2,
                   "idle_device_kib_per_stream": 4.0,
                   "restart_s": 0.31},
        "reference": {"connrate_per_s": 1900.0, "loaded_p99_ms": 900.0},
        "frp": {"connrate_per_s": 2100.0, "loaded_p99_ms": 5.0},
        "rathole": {"lat_p50_ms": 0.25, "bulk1_mbps": 900.0, "loaded_p99_ms": 1.5},
    }]
    goals = {g.text: g.met for g in report.round2_goals(stats.summarize_all(runs), "mproxy")}
    assert goals["new streams/s ≥ 2x issue 14's start (as a ratio to direct)"] is True  # 0.20x >= 0.18x
    assert goals["new streams/s ahead of the reference, chisel and frp"] is False  # frp 2,100 > 2,000
    assert goals["added p50 latency ≤ rathole's"] is False  # 0.2 ms added vs rathole's 0.15
    assert goals["1-stream MB/s ≥ rathole's"] is True
    assert goals["interactive p99 under bulk ≤ 3x its idle p99"] is True
    assert goals["p99 under bulk below every peer's"] is False  # rathole 1.5 ms
    assert goals["memory per idle stream, edge"] is False and goals["memory per idle stream, sidecar"] is True
    assert goals["edge restart, from the new process's spawn to traffic"] is False
    text = report.round2_table(stats.summarize_all(runs))
    assert "| mproxy |" in text.splitlines()[0] and "mproxy-wss" not in text
