"""Rendering results: the machine description, the markdown table and the goal checks (pure)."""

from __future__ import annotations

import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mbench.stats import Summary

PEERS = ("chisel", "frp", "rathole", "bore")
LABELS = {
    "direct": "direct loopback",
    "mproxy": "**mproxy**",
    "mproxy-wss": "**mproxy (wss)**",
    "mproxy-3edges": "**mproxy, 3 edges**",
    "reference": "reference (node proxy-packer)",
    "chisel": "chisel",
    "frp": "frp",
    "rathole": "rathole",
    "bore": "bore",
}

Table = Mapping[str, Mapping[str, Summary]]


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; a dash when missing. Large numbers get thousands separators."""
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f" ({value:.2f}x)" if value < 10 else f" ({value:.0f}x)"


def cell(table: Table, system: str, metric: str, digits: int = 1, with_ratio: bool = True) -> str:
    s = table.get(system, {}).get(metric)
    if s is None or s.median is None:
        return "—"
    text = fmt(s.median, digits)
    if with_ratio and system != "direct":
        text += fmt_ratio(s.ratio)
    return text


COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    # header, metric, digits, ratio to direct
    ("1 stream MB/s", "bulk1_mbps", 0, True),
    ("8 streams MB/s", "bulk8_mbps", 0, True),
    ("req/resp p50 ms", "lat_p50_ms", 3, True),
    ("req/resp p99 ms", "lat_p99_ms", 3, True),
    ("p99 ms under bulk", "loaded_p99_ms", 2, False),
    ("under bulk ÷ idle p99", "loaded_p99_x_idle", 1, False),
    ("new streams/s", "connrate_per_s", 0, True),
    ("HTTPS new conns/s", "https_connrate_per_s", 0, True),
    ("1,000 streams: small p99 ms", "mixed_p99_ms", 2, True),
    ("idle KiB/stream, edge", "idle_edge_kib_per_stream", 1, False),
    ("idle KiB/stream, device", "idle_device_kib_per_stream", 1, False),
    ("edge restart → flowing, s", "restart_s", 2, False),
    ("… after the new edge listens, s", "restart_after_listen_s", 2, False),
)


def results_table(table: Table, systems: Sequence[str], errors: Mapping[str, str], runs: int = 0) -> str:
    head = "| system | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [head, rule]
    for system in systems:
        if system in errors and system not in table:
            rows.append(f"| {LABELS.get(system, system)} | " + " | ".join("—" for _ in COLUMNS) + " |")
            continue
        cells = [cell(table, system, metric, digits, ratio) for _, metric, digits, ratio in COLUMNS]
        label = LABELS.get(system, system)
        counted = max((s.runs for s in table.get(system, {}).values()), default=0)
        if runs and 0 < counted < runs:
            label += f" ({counted} of {runs} runs)"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    target: str
    measured: str
    met: bool | None  # None: not measured


def _median(table: Table, system: str, metric: str) -> float | None:
    s = table.get(system, {}).get(metric)
    return None if s is None else s.median


def _best(table: Table, metric: str, systems: Sequence[str]) -> tuple[str, float] | None:
    vals = [(s, v) for s in systems if (v := _median(table, s, metric)) is not None]
    return max(vals, key=lambda sv: sv[1]) if vals else None


def goals(table: Table) -> list[Goal]:
    """The brief's goals for mproxy, checked against the medians."""
    out: list[Goal] = []
    m = "mproxy"
    bulk = _median(table, m, "bulk1_mbps")
    best = _best(table, "bulk1_mbps", PEERS)
    target = f"≥ {fmt(best[1], 0)} MB/s ({best[0]})" if best else "—"
    out.append(Goal("1-stream throughput ≥ best peer", target, f"{fmt(bulk, 0)} MB/s",
                    None if bulk is None or best is None else bulk >= best[1]))
    r = table.get(m, {}).get("bulk1_mbps")
    ratio = None if r is None else r.ratio
    out.append(Goal("1-stream throughput ≥ 20% of direct", "≥ 0.20x",
                    "—" if ratio is None else f"{ratio:.2f}x", None if ratio is None else ratio >= 0.2))
    ref = _median(table, "reference", "bulk1_mbps")
    target = f"≥ {fmt(None if ref is None else 2 * ref, 0)} MB/s"
    out.append(Goal("1-stream throughput ≥ 2x the reference system", target, f"{fmt(bulk, 0)} MB/s",
                    None if bulk is None or ref is None else bulk >= 2 * ref))
    p50, ref50 = _median(table, m, "lat_p50_ms"), _median(table, "reference", "lat_p50_ms")
    out.append(Goal("adds less latency than the reference (p50)", f"< {fmt(ref50, 3)} ms",
                    f"{fmt(p50, 3)} ms", None if p50 is None or ref50 is None else p50 < ref50))
    x = _median(table, m, "loaded_p99_x_idle")
    out.append(Goal("interactive p99 under bulk ≤ 3x idle p99", "≤ 3.0x", "—" if x is None else f"{x:.1f}x",
                    None if x is None else x <= 3.0))
    for role, label in (("edge", "edge"), ("device", "sidecar")):
        kib = _median(table, m, f"idle_{role}_kib_per_stream")
        out.append(Goal(f"memory per idle stream, {label}", "≤ 16 KiB", f"{fmt(kib, 1)} KiB",
                        None if kib is None else kib <= 16))
    rs = _median(table, m, "restart_s")
    out.append(Goal("traffic flows again after an edge restart (from the new edge's spawn)", "≤ 0.5 s",
                    f"{fmt(rs, 2)} s", None if rs is None else rs <= 0.5))
    rl = _median(table, m, "restart_after_listen_s")
    out.append(Goal("... from the moment the new edge accepts connections", "≤ 0.5 s", f"{fmt(rl, 2)} s",
                    None if rl is None else rl <= 0.5))
    cr = _median(table, m, "connrate_per_s")
    best_cr = _best(table, "connrate_per_s", PEERS)
    out.append(Goal("new streams per second ≥ best peer",
                    f"≥ {fmt(best_cr[1], 0)}/s ({best_cr[0]})" if best_cr else "—", f"{fmt(cr, 0)}/s",
                    None if cr is None or best_cr is None else cr >= best_cr[1]))
    return out


# Issue 14 ("performance, round 2") measured its starting point in the full run committed at 286bd65:
# mproxy opened 0.09x direct's new streams/s there. Its goals, each checked over ws and over wss.
ROUND2_CONNRATE_RATIO = 0.09
ROUND2_IDLE_KIB = {"edge": 7.1, "device": 4.3}
MULTIPLEXED_PEERS = ("reference", "chisel", "frp")
ROUND2_ANCHOR = "round-2-issue-14-stream-open-idle-memory-start-up"


def _ratio(table: Table, system: str, metric: str) -> float | None:
    s = table.get(system, {}).get(metric)
    return None if s is None else s.ratio


def round2_goals(table: Table, system: str) -> list[Goal]:
    """Issue 14's goals for one mproxy system (ws or wss), checked against the medians of this run."""
    out: list[Goal] = []
    cr, ratio = _median(table, system, "connrate_per_s"), _ratio(table, system, "connrate_per_s")
    target = 2 * ROUND2_CONNRATE_RATIO
    out.append(Goal("new streams/s ≥ 2x issue 14's start (as a ratio to direct)", f"≥ {target:.2f}x",
                    "—" if ratio is None else f"{ratio:.2f}x", None if ratio is None else ratio >= target))
    best = _best(table, "connrate_per_s", MULTIPLEXED_PEERS)
    out.append(Goal("new streams/s ahead of the reference, chisel and frp",
                    f"> {fmt(best[1], 0)}/s ({best[0]})" if best else "—", f"{fmt(cr, 0)}/s",
                    None if cr is None or best is None else cr > best[1]))
    direct = _median(table, "direct", "lat_p50_ms")
    added = None if direct is None or (v := _median(table, system, "lat_p50_ms")) is None else v - direct
    rat = _median(table, "rathole", "lat_p50_ms")
    rat_added = None if direct is None or rat is None else rat - direct
    out.append(Goal("added p50 latency ≤ rathole's", f"≤ {fmt(rat_added, 3)} ms", f"{fmt(added, 3)} ms",
                    None if added is None or rat_added is None else added <= rat_added))
    bulk, rat_bulk = _median(table, system, "bulk1_mbps"), _median(table, "rathole", "bulk1_mbps")
    out.append(Goal("1-stream MB/s ≥ rathole's", f"≥ {fmt(rat_bulk, 0)} MB/s", f"{fmt(bulk, 0)} MB/s",
                    None if bulk is None or rat_bulk is None else bulk >= rat_bulk))
    x = _median(table, system, "loaded_p99_x_idle")
    out.append(Goal("interactive p99 under bulk ≤ 3x its idle p99", "≤ 3.0x",
                    "—" if x is None else f"{x:.1f}x", None if x is None else x <= 3.0))
    mine = _median(table, system, "loaded_p99_ms")
    peers = [(s, v) for s in (*PEERS, "reference") if (v := _median(table, s, "loaded_p99_ms")) is not None]
    low = min(peers, key=lambda sv: sv[1]) if peers else None
    out.append(Goal("p99 under bulk below every peer's", f"< {fmt(low[1], 2)} ms ({low[0]})" if low else "—",
                    f"{fmt(mine, 2)} ms", None if mine is None or low is None else mine < low[1]))
    for role, label in (("edge", "edge"), ("device", "sidecar")):
        kib = _median(table, system, f"idle_{role}_kib_per_stream")
        limit = ROUND2_IDLE_KIB[role]
        out.append(Goal(f"memory per idle stream, {label}", f"≤ {limit} KiB", f"{fmt(kib, 1)} KiB",
                        None if kib is None else kib <= limit))
    rs = _median(table, system, "restart_s")
    out.append(Goal("edge restart, from the new process's spawn to traffic", "≤ 0.30 s", f"{fmt(rs, 2)} s",
                    None if rs is None else rs <= 0.3))
    return out


def round2_table(table: Table) -> str:
    """Issue 14's goals, one column per transport (ws, wss)."""
    systems = [s for s in ("mproxy", "mproxy-wss") if s in table]
    if not systems:
        return "(mproxy was not measured)"
    mark = {True: "met", False: "**missed**", None: "not measured"}
    columns = {s: round2_goals(table, s) for s in systems}
    head = "| goal | target (" + ", ".join(systems) + ") | " + " | ".join(systems) + " |"
    rows = [head, "|---|---|" + "---|" * len(systems)]
    for i, goal in enumerate(columns[systems[0]]):
        targets = " / ".join(dict.fromkeys(columns[s][i].target for s in systems))
        cells = [f"{columns[s][i].measured}: {mark[columns[s][i].met]}" for s in systems]
        rows.append(f"| {goal.text} | {targets} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def goals_table(items: Sequence[Goal]) -> str:
    mark = {True: "met", False: "**missed**", None: "not measured"}
    rows = ["| goal | target | mproxy | |", "|---|---|---|---|"]
    rows += [f"| {g.text} | {g.target} | {g.measured} | {mark[g.met]} |" for g in items]
    return "\n".join(rows)


def _version(argv: Sequence[str], pattern: str = r"\d+\.\d+(\.\d+)?") -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(0) if match else "unknown"


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine(python: Path) -> dict[str, str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cores = str(sum(1 for line in cpuinfo.splitlines() if line.startswith("processor")) or "?")
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return {
        "load": load,
        "cpu": cpu_model(cpuinfo),
        "cores": cores,
        "kernel": platform.release(),
        "python": _version([str(python), "--version"]),
        "go": _version(["go", "version"], r"go\d+\.\d+(\.\d+)?"),
        "rust": _version(["rustc", "--version"]),
        "node": _version(["node", "--version"]),
    }


def render(
    *,
    table: Table,
    systems: Sequence[str],
    errors: Mapping[str, str],
    mach: Mapping[str, str],
    runs: int,
    plan: Mapping[str, object],
    versions: Mapping[str, str],
    when: str,
    figures: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
    profile: str = "",
) -> str:
    lines = [
        "# mproxy against direct loopback and the tunnels people use today",
        "",
        f"Generated by `scripts/bench` on {when}. Each number is the **median of {runs} run(s)**; a ratio in"
        " parentheses is the median over runs of that system's value divided by direct loopback's value "
        "**in the same run** (for throughput higher is better, for latency lower is better).",
        "",
        "## Machine",
        "",
        f"- CPU: {mach.get('cpu')}, {mach.get('cores')} cores; kernel {mach.get('kernel')}",
        f"- Python {mach.get('python')}, Go {mach.get('go')}, Rust {mach.get('rust')}, "
        f"node {mach.get('node')}; load average at the start {mach.get('load', '?')}",
        "- Client, edge, device (sidecar) and backend all share these cores, for every system alike, so "
        "ratios are fair while absolute numbers are modest. The load generator and the backend are one "
        "Go program (tests/bench/loadgen), so they are never the bottleneck.",
        "",
        "## Scenarios",
        "",
        f"- **1 stream / 8 streams**: download from the backend through the system for "
        f"{plan.get('duration')} s after a 0.5 s warm-up, MB/s at the receiver (1 MB = 10^6 bytes).",
        f"- **req/resp**: 64-byte echo on one stream at a fixed {plan.get('rate')} requests/s; latency is "
        "measured from the request's scheduled send time when a stall delayed it (no coordinated omission), "
        "else from its actual send.",
        "- **under bulk**: the same echo stream while one bulk download runs through the same tunnel; "
        "÷ idle is this p99 over the req/resp p99 of the same run.",
        f"- **new streams/s**: {plan.get('connrate_workers')} workers each open a stream, echo one byte, "
        "close, repeat.",
        "- **HTTPS new conns/s**: the same with a full TLS handshake per connection, end to end with the "
        "backend's own certificate (verified, SNI bench.test, no resumption); mproxy takes it on its "
        "SNI-passthrough (`tls`) listener and routes by name, the others forward the port.",
        "- **1,000 streams**: 996 small echo streams and 4 bulk downloads open at once; the small streams "
        "send 2,000 64-byte requests/s in total on a fixed schedule; p99 of the small requests.",
        f"- **idle**: {plan.get('idle_streams')} streams, each proven end to end by one echo, then held; RSS "
        "growth of the edge and of the device process divided by the streams.",
        "- **edge restart**: the edge process is stopped (SIGTERM) and started again while a probe tries an "
        "end-to-end echo every 10 ms; seconds from the new edge's spawn to the first echo that succeeds, "
        "and from the first connection the new edge accepted (so its start-up time is left out; chisel, frp "
        "and rathole open the public port only once their client is back, so that second figure is ~0 for "
        "them by construction). Each peer reconnects with its own default policy; mproxy runs from compiled "
        "bytecode, as in its image.",
        "",
        "## Systems",
        "",
        "| system | what runs | version |",
        "|---|---|---|",
    ]
    for system in systems:
        lines.append(f"| {LABELS.get(system, system)} | {versions.get(system + ':what', '')} | "
                     f"{versions.get(system, '')} |")
    lines += ["", "## Results", "", results_table(table, systems, errors, runs), ""]
    if errors:
        lines += ["Systems or scenarios that could not be measured:", ""]
        lines += [f"- {LABELS.get(s, s)}: {msg}" for s, msg in sorted(errors.items())]
        lines.append("")
    lines += ["## mproxy's goals", "", goals_table(goals(table)), ""]
    lines += ["## Performance round 2 (issue 14): its goals over ws and wss", "",
              "Each against this run's medians; *2x issue 14's start* is a ratio to direct, the start being "
              f"{ROUND2_CONNRATE_RATIO:.2f}x in the full run committed at 286bd65. Where the time goes "
              f"for each missed goal: [dataplane.md](dataplane.md#{ROUND2_ANCHOR}).", "",
              round2_table(table), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{title}]({name})" for name, title in figures]
        lines.append("")
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines.append("")
    if profile:
        lines += [
            "## Where mproxy's time goes (py-spy)", "",
            "Recorded in a pass of its own after the measured rounds (so the profiler's cost is in no number "
            "above): `py-spy record --rate 200 --format raw` on the edge and on the sidecar while one "
            "scenario runs. *self %*: share of samples with the function on top of the Python stack (C code "
            "it calls, such as aiohttp's WebSocket masking or a socket send, is counted in it); *incl. %*: "
            "share of samples with it anywhere on the stack.", "", profile, ""]
    else:
        lines += [
            "## Where mproxy's time goes", "",
            "This run was not profiled (`scripts/bench --profile` adds a py-spy pass). The latest profiles "
            "of the edge and the sidecar, and what was changed because of them, are in "
            "[dataplane.md](dataplane.md#performance-work).", ""]
    return "\n".join(lines)
