"""Draw the benchmark figures from a results JSON. Runs in the throwaway tool venv (matplotlib),
never in the project's environment, so it imports nothing from mbench.

usage: plot.py RESULTS.json OUT_DIR   (prints the file names it wrote)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"direct": "#7f7f7f", "mproxy": "#d62728", "reference": "#9467bd", "chisel": "#1f77b4",
          "frp": "#2ca02c", "rathole": "#ff7f0e", "bore": "#8c564b", "mproxy-3edges": "#e377c2"}


def med(summary: dict[str, Any], system: str, metric: str) -> float | None:
    v = summary.get(system, {}).get(metric, {})
    return v.get("median") if v else None


def rat(summary: dict[str, Any], system: str, metric: str) -> float | None:
    v = summary.get(system, {}).get(metric, {})
    return v.get("ratio") if v else None


def grouped(ax: Any, systems: list[str], summary: dict[str, Any], metrics: list[tuple[str, str]],
            ratio: bool, log: bool) -> bool:
    """Grouped bars, one group per system; False when there was nothing to draw."""
    width = 0.8 / len(metrics)
    drawn = False
    for k, (metric, label) in enumerate(metrics):
        xs, ys, colors, notes = [], [], [], []
        for i, s in enumerate(systems):
            v = med(summary, s, metric)
            if v is None or (log and v <= 0):
                continue
            drawn = True
            xs.append(i + (k - (len(metrics) - 1) / 2) * width)
            ys.append(v)
            colors.append(COLORS.get(s, "#333"))
            r = rat(summary, s, metric) if ratio and s != "direct" else None
            text = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            notes.append(text + (f"\n{r:.2f}x" if r is not None else ""))
        bars = ax.bar(xs, ys, width, label=label, alpha=0.55 + 0.45 * (k == 0), color=colors,
                      edgecolor="black", linewidth=0.5, hatch=("", "//", "..")[k % 3])
        for b, n in zip(bars, notes, strict=True):
            ax.annotate(n, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=7)
    ax.set_xticks(range(len(systems)))
    ax.set_xticklabels(systems)
    if log and drawn:
        ax.set_yscale("log")
    if len(metrics) > 1 and drawn:
        ax.legend(fontsize=8)
    return drawn


def main(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    summary = data["summary"]
    systems = [s for s in data["systems"] if s in summary]
    n = len(data["runs"])
    sub = f"median of {n} run(s); labels: value and ratio to direct loopback in the same run"
    out.mkdir(parents=True, exist_ok=True)
    made = []

    def save(fig: Any, name: str, drawn: bool = True) -> None:
        if not drawn:
            plt.close(fig)
            return
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    fig, ax = plt.subplots(figsize=(9, 4.8))
    bulk = [("bulk1_mbps", "1 stream"), ("bulk8_mbps", "8 streams")]
    drawn = grouped(ax, systems, summary, bulk, True, True)
    ax.set_ylabel("MB/s (log scale)")
    ax.set_title(f"Bulk throughput\n{sub}", fontsize=10)
    save(fig, "throughput.png", drawn)

    fig, ax = plt.subplots(figsize=(9, 4.8))
    drawn = grouped(ax, systems, summary, [("lat_p50_ms", "p50 idle"), ("lat_p99_ms", "p99 idle"),
                                           ("loaded_p99_ms", "p99 under bulk")], False, True)
    ax.set_ylabel("ms (log scale)")
    rate = data["plan"]["rate"]
    ax.set_title(f"64-byte request/response at {rate:.0f}/s\nmedian of {n} run(s)", fontsize=10)
    save(fig, "latency.png", drawn)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    drawn = grouped(ax, systems, summary, [("connrate_per_s", "new streams/s")], True, False)
    ax.set_ylabel("streams opened, echoed and closed per second")
    ax.set_title(f"New streams per second\n{sub}", fontsize=10)
    save(fig, "connrate.png", drawn)

    tunnels = [s for s in systems if s != "direct"]
    if tunnels:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        idle = [("idle_edge_kib_per_stream", "edge"), ("idle_device_kib_per_stream", "device / sidecar")]
        drawn = grouped(ax, tunnels, summary, idle, False, False)
        ax.axhline(16, color="red", linestyle="--", linewidth=1)
        ax.text(-0.4, 16.5, "mproxy goal: 16 KiB", color="red", fontsize=8)
        ax.set_ylabel("KiB of RSS per idle stream")
        ax.set_title(f"Memory per idle stream ({data['plan']['idle_streams']} streams)\nmedian of {n} run(s)",
                     fontsize=10)
        save(fig, "idle_memory.png", drawn)

        fig, ax = plt.subplots(figsize=(9, 4.5))
        limit = data["plan"]["restart_timeout"]
        floor = 0.005  # a log axis cannot show 0: an instant recovery is drawn at 5 ms
        for i, s in enumerate(tunnels):
            v = med(summary, s, "restart_s")
            if v is None:
                ax.bar(i, limit, 0.7, color="white", edgecolor=COLORS.get(s, "#333"), hatch="xx")
                ax.annotate(f"no recovery\nin {limit:.0f} s", (i, limit), ha="center", va="bottom",
                            fontsize=7)
                continue
            after = med(summary, s, "restart_after_listen_s")
            ax.bar(i - 0.18, max(v, floor), 0.36, color=COLORS.get(s, "#333"), edgecolor="black",
                   linewidth=0.5, label="from the new edge's spawn" if i == 0 else None)
            ax.annotate(f"{v:.2f}", (i - 0.18, max(v, floor)), ha="center", va="bottom", fontsize=7)
            if after is not None:
                ax.bar(i + 0.18, max(after, floor), 0.36, color=COLORS.get(s, "#333"), alpha=0.5,
                       edgecolor="black", linewidth=0.5, hatch="//",
                       label="from its first accepted connection" if i == 0 else None)
                ax.annotate(f"{after:.2f}", (i + 0.18, max(after, floor)), ha="center", va="bottom",
                            fontsize=7)
        ax.legend(fontsize=8, loc="upper center")
        ax.axhline(0.5, color="red", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(tunnels)))
        ax.set_xticklabels(tunnels)
        ax.set_ylabel("seconds until traffic flows (log)")
        ax.set_title("Edge restart: time until traffic flows again (red: mproxy goal 0.5 s)\n"
                     f"median of {n} run(s)", fontsize=10)
        keys = ("restart_s", "restart_not_recovered_after_s")
        measured = any(k in summary.get(s, {}) for s in tunnels for k in keys)
        save(fig, "restart.png", measured)
    print(" ".join(made))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
