"""Pure statistics over repeated runs: medians, percentiles and ratios to the direct baseline."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BASELINE = "direct"


def median(values: Iterable[float]) -> float | None:
    """The median of the finite values, or None when there are none."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile `p` (0..100) of `values`, or None when empty."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def valid_runs(runs: Sequence[Run]) -> list[dict[str, dict[str, float | None]]]:
    """Drop values a dead process produced: a role whose RSS reads 0 after the idle streams had exited,
    so its per-stream figure (0 minus its start) means nothing."""
    out = []
    for run in runs:
        clean: dict[str, dict[str, float | None]] = {}
        for system, metrics in run.items():
            m = dict(metrics)
            for role in ("edge", "device"):
                if m.get(f"idle_{role}_rss_mib") == 0:
                    m.pop(f"idle_{role}_kib_per_stream", None)
            clean[system] = m
        out.append(clean)
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    """One metric of one system over all runs."""

    median: float | None
    low: float | None
    high: float | None
    runs: int
    ratio: float | None  # median over runs of (value / direct's value in the same run)


# One run: system -> metric -> value (None where the scenario failed).
Run = Mapping[str, Mapping[str, float | None]]


def summarize(runs: Sequence[Run], system: str, metric: str, baseline: str = BASELINE) -> Summary:
    """Median, range and same-run ratio to the baseline of one metric across runs."""
    values: list[float] = []
    ratios: list[float] = []
    for run in runs:
        value = run.get(system, {}).get(metric)
        if value is None or not math.isfinite(value):
            continue
        values.append(value)
        r = ratio(value, run.get(baseline, {}).get(metric))
        if r is not None:
            ratios.append(r)
    return Summary(
        median=median(values),
        low=min(values) if values else None,
        high=max(values) if values else None,
        runs=len(values),
        ratio=median(ratios),
    )


def summarize_all(runs: Sequence[Run], baseline: str = BASELINE) -> dict[str, dict[str, Summary]]:
    """Every (system, metric) seen in any run, summarized."""
    out: dict[str, dict[str, Summary]] = {}
    for run in runs:
        for system in run:
            out.setdefault(system, {})
    for system in out:
        seen = {m for run in runs for m in run.get(system, {})}
        out[system] = {m: summarize(runs, system, m, baseline) for m in sorted(seen)}
    return out
