"""Two scenarios of issue 14: HTTPS new connections/s and the 1,000-stream mixed load.

- https_connrate: each worker opens a connection, does a full TLS handshake with the backend's own
  certificate (verified, SNI bench.test, no session resumption), echoes one byte, closes. mproxy takes it
  on its SNI-passthrough listener and routes by name; the TCP forwarders (chisel, frp, rathole, bore)
  carry the same bytes on their one forwarded port.
- mixed: 1,000 streams open at once through the system: 996 small echo streams sending 64-byte requests
  (2,000/s in total, each on a fixed schedule, no coordinated omission) while 4 streams download in bulk;
  the p99 of the small requests, and the bulk MB/s beside it.
"""

from __future__ import annotations

from mbench.procs import BenchError
from mbench.scenarios import Metrics, Plan, _dur, loadgen
from mbench.systems import System

MIXED_SMALL = 996
MIXED_BULK = 4
MIXED_RATE = 2000.0  # small requests per second, all small streams together


def https_connrate(system: System, plan: Plan) -> Metrics:
    entry = system.entry
    system.entry = system.tls_entry or entry  # loadgen() dials system.entry
    try:
        r = loadgen(system, "connrate", "-tls", "-duration", _dur(plan.duration), "-concurrency",
                    str(plan.connrate_workers), timeout=plan.duration + 30)
    finally:
        system.entry = entry
    if r["ok"] == 0:
        raise BenchError(f"no HTTPS connection completed: {r.get('first_error')}")
    out: Metrics = {"https_connrate_per_s": r["per_sec"], "https_connrate_p99_ms": r["p99_ms"]}
    if r["errors"]:
        out["https_connrate_errors"] = float(r["errors"])
    return out


def mixed(system: System, plan: Plan) -> Metrics:
    r = loadgen(system, "mixed", "-small", str(MIXED_SMALL), "-bulk", str(MIXED_BULK), "-rate",
                str(MIXED_RATE), "-duration", _dur(plan.duration), timeout=plan.duration + 90)
    if not r.get("ok"):
        raise BenchError(f"no small request completed: {r.get('first_error')}")
    if r.get("errors") or r.get("streams", 0) < MIXED_SMALL or r.get("bulk_ok", 0) < MIXED_BULK:
        system.notes.append(f"mixed: {r.get('streams')} of {MIXED_SMALL} small streams opened, "
                            f"{r.get('errors')} failed, {r.get('bulk_ok')} of {MIXED_BULK} bulk streams "
                            f"carried data (first error: {r.get('first_error')})")
    return {"mixed_p50_ms": r["p50_ms"], "mixed_p99_ms": r["p99_ms"], "mixed_bulk_mbps": r["bulk_mbps"]}
