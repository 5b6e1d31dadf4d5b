"""Command-line options of `scripts/bench` (pure: parsing and validation only)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("direct", "mproxy", "mproxy-wss", "mproxy-3edges", "reference", "chisel", "frp", "rathole", "bore")
# idle first: each system's memory is weighed while the process is fresh, before bulk transfers have
# grown (and then freed) its buffers; restart last, as it replaces the edge. udp runs UDP-only instances of
# the systems that carry UDP (mbench/udp.py), after the others in each round.
SCENARIOS = ("idle", "bulk1", "bulk8", "latency", "loaded", "connrate", "https", "mixed", "restart", "udp")
REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True, slots=True)
class Options:
    systems: tuple[str, ...]
    scenarios: tuple[str, ...]
    runs: int
    duration: float  # seconds of each measured window
    rate: float  # requests per second of the latency scenarios
    idle_streams: int
    connrate_workers: int
    quick: bool
    build: bool
    write: bool
    profile: bool
    cache: Path
    out_md: Path
    out_dir: Path
    results: Path
    render: Path | None  # re-render from this results file instead of measuring


def _csv(choices: Sequence[str], what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(choices)}"
            )
        return items

    return parse


def _positive(kind: type):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value  # type: ignore[no-any-return]

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark mproxy side by side with direct loopback, the reference (node proxy-packer) "
        "relay/device, chisel, frp, rathole and bore. Writes docs/benchmarks/peers.md and PNG figures, and "
        "with the udp scenario docs/benchmarks/udp.md (DNS through mproxy, frp and rathole).",
    )
    p.add_argument("--quick", action="store_true", help="smoke run (~2 min): 1 run, short windows, 1000 idle")
    p.add_argument("--runs", type=_positive(int), help="rounds over every system (default 3, quick 1)")
    p.add_argument("--systems", type=_csv(SYSTEMS, "system"), default=SYSTEMS, help="comma list")
    p.add_argument("--scenarios", type=_csv(SCENARIOS, "scenario"), default=SCENARIOS, help="comma list")
    p.add_argument("--duration", type=_positive(float), help="seconds per measured window (default 2.5)")
    p.add_argument("--rate", type=_positive(float), default=200.0, help="latency requests/s (default 200)")
    p.add_argument("--idle-streams", type=_positive(int), help="idle streams (default 10000, quick 1000)")
    p.add_argument("--connrate-workers", type=_positive(int), default=8, help="parallel stream openers")
    p.add_argument("--no-build", dest="build", action="store_false", help="use already built peers only")
    p.add_argument("--no-write", dest="write", action="store_false", help="print; write no docs/figures")
    p.add_argument("--profile", action="store_true", help="py-spy the mproxy edge and sidecar under load")
    p.add_argument("--cache", type=Path, help="build cache (default $MPROXY_CACHE or ~/.cache/mproxy)")
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks" / "peers.md")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "benchmarks")
    p.add_argument("--results", type=Path, default=REPO / "tests" / "bench" / "results" / "peers.json")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: re-render the report and figures from a results file")
    return p


def parse_args(argv: Sequence[str], env: dict[str, str] | None = None) -> Options:
    env = dict(os.environ) if env is None else env
    ns = build_parser().parse_args(list(argv))
    if "direct" not in ns.systems:
        # Every figure is a ratio to direct loopback measured in the same run.
        ns.systems = ("direct", *ns.systems)
    cache = ns.cache or Path(env.get("MPROXY_CACHE") or Path(env.get("HOME", "/root")) / ".cache" / "mproxy")
    return Options(
        systems=tuple(ns.systems),
        scenarios=tuple(ns.scenarios),
        runs=int(ns.runs or (1 if ns.quick else 3)),
        duration=float(ns.duration or (1.5 if ns.quick else 2.5)),
        rate=float(ns.rate),
        idle_streams=int(ns.idle_streams or (1000 if ns.quick else 10000)),
        connrate_workers=int(ns.connrate_workers),
        quick=bool(ns.quick),
        build=bool(ns.build),
        write=bool(ns.write),
        profile=bool(ns.profile),
        cache=Path(cache),
        out_md=ns.out_md,
        out_dir=ns.out_dir,
        results=ns.results,
        render=ns.render,
    )
