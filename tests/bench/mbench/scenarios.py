"""The scenarios: each drives the Go load generator at one system and returns flat metrics.

Metric names end in their unit. Every scenario is bounded in time; a failure raises BenchError with
the reason, which the report shows instead of a number.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mbench.cli import Options
from mbench.procs import BenchError, rss_kib
from mbench.systems import System, echo_once, pids

Metrics = dict[str, float | None]


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float
    rate: float
    idle_streams: int
    connrate_workers: int
    restart_timeout: float
    idle_deadline: float

    @classmethod
    def from_options(cls, opts: Options) -> Plan:
        return cls(opts.duration, opts.rate, opts.idle_streams, opts.connrate_workers,
                   restart_timeout=8.0 if opts.quick else 15.0, idle_deadline=15.0 if opts.quick else 45.0)


def loadgen(system: System, sub: str, *args: str, timeout: float, port: int | None = None) -> dict[str, Any]:
    argv = [str(system.ctx.loadgen), sub, "-addr", f"127.0.0.1:{port or system.entry}", *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"loadgen {sub} did not finish within {timeout:.0f}s") from None
    if out.returncode != 0 or not out.stdout.strip():
        raise BenchError(f"loadgen {sub} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def split(total: int, parts: int) -> list[int]:
    """`total` workers or streams over `parts` entries, as evenly as they go (8 over 3: 3, 3, 2)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def spread(system: System, sub: str, total: int, flag: str, *args: str,
           timeout: float) -> list[dict[str, Any]]:
    """One loadgen per entry port of a system with several edges (MproxyEdges.entries), at once, with
    `total` (its `flag`: -concurrency, -streams) split over them, so the offered load equals one edge's."""
    entries: list[int] = list(getattr(system, "entries", None) or [system.entry])
    shares = [(port, n) for port, n in zip(entries, split(total, len(entries)), strict=True) if n]
    results: list[dict[str, Any]] = [{} for _ in shares]
    failures: list[BaseException] = []

    def one(i: int, port: int, n: int) -> None:
        try:
            results[i] = loadgen(system, sub, flag, str(n), *args, timeout=timeout, port=port)
        except BaseException as exc:  # re-raised below in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i, port, n)) for i, (port, n) in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


def _dur(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def bulk(system: System, plan: Plan, streams: int) -> Metrics:
    parts = spread(system, "bulk", streams, "-streams", "-duration", _dur(plan.duration),
                   timeout=plan.duration + 30)
    ok = sum(r["ok"] for r in parts)
    if ok < streams:
        errors = [e for r in parts for e in r.get("errors") or []]
        raise BenchError(f"{streams - ok} of {streams} bulk streams carried nothing: {errors}")
    return {f"bulk{streams}_mbps": sum(r["mbps"] for r in parts)}


def latency(system: System, plan: Plan) -> Metrics:
    r = loadgen(system, "latency", "-rate", str(plan.rate), "-duration", _dur(plan.duration),
                timeout=plan.duration * 3 + 30)
    if r.get("errors"):
        raise BenchError(f"latency stream failed: {r['errors'][0]}")
    return {"lat_p50_ms": r["p50_ms"], "lat_p99_ms": r["p99_ms"]}


def loaded(system: System, plan: Plan, idle_p99: float | None) -> Metrics:
    r = loadgen(system, "latency", "-rate", str(plan.rate), "-duration", _dur(plan.duration),
                "-bulk-streams", "1", timeout=plan.duration * 3 + 30)
    if r.get("errors"):
        raise BenchError(f"interactive stream under bulk failed: {r['errors'][0]}")
    bulk_r = r.get("bulk") or {}
    out: Metrics = {"loaded_p50_ms": r["p50_ms"], "loaded_p99_ms": r["p99_ms"],
                    "loaded_bulk_mbps": bulk_r.get("mbps")}
    if idle_p99:
        out["loaded_p99_x_idle"] = r["p99_ms"] / idle_p99
    return out


def connrate(system: System, plan: Plan) -> Metrics:
    parts = spread(system, "connrate", plan.connrate_workers, "-concurrency", "-duration",
                   _dur(plan.duration), timeout=plan.duration + 30)
    if sum(r["ok"] for r in parts) == 0:
        raise BenchError(f"no stream completed: {parts[0].get('first_error')}")
    # Spread over several edges: the sum of the rates, and the worst entry's p99.
    out: Metrics = {"connrate_per_s": sum(r["per_sec"] for r in parts),
                    "connrate_p99_ms": max(r["p99_ms"] for r in parts)}
    errors = sum(r["errors"] for r in parts)
    if errors:
        out["connrate_errors"] = float(errors)
    return out


def idle(system: System, plan: Plan) -> Metrics:
    """Open plan.idle_streams streams (each proven end to end), hold them, weigh edge and device."""
    roles = pids(system)
    before = {role: rss_kib(pid) for role, pid in roles.items()}
    argv = [str(system.ctx.loadgen), "idle", "-addr", f"127.0.0.1:{system.entry}", "-n",
            str(plan.idle_streams), "-deadline", _dur(plan.idle_deadline)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    timer = threading.Timer(plan.idle_deadline + 60, proc.kill)  # the loadgen's own deadline failed
    timer.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line:
            raise BenchError(f"loadgen idle died: {proc.stderr.read()[-300:] if proc.stderr else ''}")
        r = json.loads(line)
        time.sleep(1.0)  # let the roles settle their buffers before weighing them
        after = {role: rss_kib(pid) for role, pid in roles.items()}
        for peer in (system.edge, system.device):
            if peer is not None and not peer.alive():
                raise BenchError(f"{peer.name} exited while opening the idle streams: {peer.first_error()}")
        ok = int(r["ok"])
        out: Metrics = {"idle_ok": float(ok), "idle_open_s": r["seconds"]}
        if ok < plan.idle_streams:
            # Still weighed (per stream that worked), and reported as a failure beside the number.
            out["idle_failed"] = float(plan.idle_streams - ok)
            system.notes.append(f"only {ok} of {plan.idle_streams} idle streams carried an echo within "
                                f"{plan.idle_deadline:.0f}s (first error: {r.get('first_error')})")
        if ok:
            for role in roles:
                out[f"idle_{role}_kib_per_stream"] = (after[role] - before[role]) / ok
                out[f"idle_{role}_rss_mib"] = after[role] / 1024
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(30)
        return out
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # streams close with the loadgen; the system gets a moment before the next scenario


def restart(system: System, plan: Plan) -> Metrics:
    """Restart the edge while a probe tries one echo every 10 ms; time until echoes succeed again."""
    if system.edge is None:
        return {}
    argv = [str(system.ctx.loadgen), "probe", "-addr", f"127.0.0.1:{system.entry}", "-interval", "10ms",
            "-timeout", "1s", "-duration", f"{int(plan.restart_timeout + 10)}s"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    attempts: list[dict[str, Any]] = []
    recovered = threading.Event()
    gone_at = [float("inf")]

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            a = json.loads(raw)
            attempts.append(a)
            if a["stage"] == "ok" and a["start"] / 1e9 >= gone_at[0]:
                recovered.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        gone, spawned = system.restart_edge()
        gone_at[0] = gone
        if system.edge is not None:
            system.edge_ready()
        recovered.wait(plan.restart_timeout)
    finally:
        if proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        t.join(5)
    return restart_metrics(attempts, gone, spawned, plan.restart_timeout)


def restart_metrics(attempts: list[dict[str, Any]], gone: float, spawned: float, limit: float) -> Metrics:
    """From probe attempts (ns wall clock): seconds from spawn (and from first accept) to first echo."""
    after = [a for a in attempts if a["start"] / 1e9 >= gone]
    oks = sorted(a["end"] / 1e9 for a in after if a["stage"] == "ok")
    accepts = sorted(a["start"] / 1e9 for a in after if a["stage"] in ("echo", "ok"))
    if not oks:
        return {"restart_s": None, "restart_not_recovered_after_s": limit}
    first_ok = oks[0]
    out: Metrics = {"restart_s": max(0.0, first_ok - spawned)}
    if accepts:
        out["restart_after_listen_s"] = max(0.0, first_ok - accepts[0])
    return out


Scenario = Callable[..., Metrics]


def settle(system: System, seconds: float = 10.0) -> None:
    """Wait until the system carries an echo again (between scenarios)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if echo_once(system.entry, timeout=1.0):
            return
        time.sleep(0.1)
    raise BenchError(f"{system.label} stopped carrying traffic")
