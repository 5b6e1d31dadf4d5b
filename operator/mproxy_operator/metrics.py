"""The operator's own Prometheus metrics (its own registry, so tests can start several operators)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, memory, open files) and python_* series, as the default registry would have them.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

RECONCILES = Counter(
    "mproxy_operator_reconciles_total",
    "Tunnel reconciliations, by trigger and result.",
    ["trigger", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "mproxy_operator_reconcile_duration_seconds",
    "Time to reconcile one Tunnel.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "mproxy_operator_reconcile_errors_total",
    "Reconciliations that failed with an API error (retried).",
    ["trigger"],
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "mproxy_operator_webhook_duration_seconds",
    "Admission review handling time, request to response.",
    ["result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
INJECTIONS = Counter(
    "mproxy_operator_injections_total",
    "Pod admissions by outcome: injected, skipped (already injected, or no Tunnel selects the pod), refused.",
    ["outcome", "dry_run"],
    registry=REGISTRY,
)
TUNNELS = Gauge(
    "mproxy_operator_tunnels",
    "Tunnels by readiness, as last reconciled by this replica.",
    ["ready"],
    registry=REGISTRY,
)
ROLLOUTS = Counter(
    "mproxy_operator_workload_rollouts_total",
    "Workloads rolled because their sidecar changed or went away.",
    registry=REGISTRY,
)

for _result in ("ok", "error"):
    for _trigger in ("change", "timer", "service", "connector", "gateway-api"):
        RECONCILES.labels(_trigger, _result)
for _trigger in ("change", "timer", "service", "connector", "gateway-api"):
    RECONCILE_ERRORS.labels(_trigger)
for _outcome in ("injected", "skipped", "refused"):
    for _dry in ("false", "true"):
        INJECTIONS.labels(_outcome, _dry)
for _ready in ("true", "false"):
    TUNNELS.labels(_ready)
