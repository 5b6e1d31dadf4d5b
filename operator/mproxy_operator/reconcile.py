"""Reconcile one Tunnel: resolve routes, render the ConfigMap, run the connector, count pods, write status.

Level-triggered and idempotent: kopf calls it on create/update/resume, on a timer, and when a Service or
connector Deployment it depends on changes. Problems with the Tunnel become conditions and Events, never
exceptions; only API failures propagate (kopf retries those).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mproxy.config.errors import ConfigError
from mproxy_operator import kube, names
from mproxy_operator.connector import connector_deployment
from mproxy_operator.inject import sidecar_hash
from mproxy_operator.kube import Kube, KubeError
from mproxy_operator.metrics import ROLLOUTS
from mproxy_operator.model import SpecError, TunnelSpec, parse_spec
from mproxy_operator.podspec import SidecarDefaults
from mproxy_operator.render import config_map, digest, render_config
from mproxy_operator.resolve import resolve_routes
from mproxy_operator.rollout import WORKLOAD_KINDS, roll_patch, workloads_to_roll
from mproxy_operator.selectors import to_string
from mproxy_operator.sidecar_view import probe
from mproxy_operator.status import (
    ConnectorCounts,
    EdgeViews,
    PodCounts,
    build_status,
    failed_status,
    pod_is_ready,
    unchanged,
)

log = logging.getLogger("mproxy_operator.reconcile")

# emit(tunnel_body, type, reason, message): posts a Kubernetes Event about the Tunnel.
Emit = Callable[[Mapping[str, Any], str, str, str], None]


SPEC_HASH = "mproxy.dev/spec-hash"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Context:
    kube: Kube
    defaults: SidecarDefaults
    native: bool
    cluster_domain: str = "cluster.local"
    sidecar_status: bool = False  # ask each ready pod's sidecar for its edges (EdgesConnected)


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def forget(namespace: str, name: str) -> None:
    with _locks_guard:
        _locks.pop((namespace, name), None)


def reconcile(ctx: Context, tunnel: Mapping[str, Any], emit: Emit) -> dict[str, Any]:
    """Reconcile and write the status; returns the status written."""
    meta = tunnel["metadata"]
    with _lock(meta["namespace"], meta["name"]):
        return _reconcile(ctx, tunnel, emit)


def _reconcile(ctx: Context, tunnel: Mapping[str, Any], emit: Emit) -> dict[str, Any]:
    meta = tunnel["metadata"]
    ns, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    previous = tunnel.get("status") or {}
    prev_conditions = previous.get("conditions") or []
    now = now_iso()
    try:
        spec = parse_spec(tunnel.get("spec") or {})
    except SpecError as exc:
        emit(tunnel, "Warning", "InvalidSpec", str(exc))
        return _write_status(
            ctx, ns, name, failed_status(generation, "InvalidSpec", str(exc), prev_conditions, now)
        )

    services = {}
    for svc in sorted(spec.referenced_services()):
        found = ctx.kube.get(kube.core(ns, "services", svc))
        if found is not None:
            services[svc] = found
    resolved, unresolved = resolve_routes(spec.routes, services, ns, ctx.cluster_domain)
    _report_route_changes(tunnel, previous, unresolved, emit)

    try:
        config = render_config(spec, resolved)
    except ConfigError as exc:
        message = f"the sidecar would refuse this config: {exc}"
        emit(tunnel, "Warning", "InvalidConfig", message)
        return _write_status(
            ctx, ns, name, failed_status(generation, "InvalidConfig", message, prev_conditions, now)
        )
    text = config.to_yaml()
    config_hash = digest(text)
    if _apply_config_map(ctx.kube, config_map(tunnel, text)):
        emit(
            tunnel,
            "Normal",
            "ConfigRendered",
            f"ConfigMap {names.config_map_name(name)} holds {len(resolved)} route(s) (hash {config_hash})",
        )

    pods = PodCounts()
    connector = ConnectorCounts()
    edges: EdgeViews | None = None
    if "gatewayReplicas" in previous:  # written before connector mode had its name: a legacy Deployment
        _delete_connector(ctx.kube, ns, names.legacy_gateway_name(name), names.LEGACY_GATEWAY_LABEL, name)
    if spec.mode == "Connector":
        connector = _apply_connector(ctx, tunnel, spec)
        if ctx.sidecar_status:
            ready_connectors = _ready_connector_pods(ctx.kube, ns, name)
            edges = EdgeViews(tuple(probe(ready_connectors, spec.metrics_port)), len(ready_connectors))
    else:
        if "connectorReplicas" in previous:  # it was in Connector mode until now
            _delete_connector(ctx.kube, ns, names.connector_name(name), names.CONNECTOR_LABEL, name)
        pods, ready_pods = _count_pods(ctx.kube, ns, name, spec)
        if ctx.sidecar_status:
            edges = EdgeViews(tuple(probe(ready_pods, spec.metrics_port)), len(ready_pods))

    new_hash = sidecar_hash(name, spec, ctx.defaults, native=ctx.native)
    old_hash = previous.get("sidecarHash")
    changed = spec.mode == "Sidecar" and old_hash and old_hash != new_hash
    if changed and _stored_hash(ctx, ns, name) != new_hash:
        rolled = roll_workloads(ctx.kube, ns, spec, "sidecar changed (image, resources or volumes)", now)
        if rolled:
            emit(
                tunnel,
                "Normal",
                "WorkloadsRolled",
                f"the sidecar changed; rolling {', '.join(rolled)} so their pods get it",
            )

    status = build_status(
        generation=generation,
        spec=spec,
        resolved=resolved,
        unresolved=unresolved,
        pods=pods,
        connector=connector,
        config_map=names.config_map_name(name),
        config_hash=config_hash,
        sidecar_hash=new_hash,
        previous=prev_conditions,
        now=now,
        edges=edges,
    )
    if unchanged(status, previous):
        return status  # a timer tick that found nothing new writes nothing (no watch event storm)
    return _write_status(ctx, ns, name, status)


def _stored_hash(ctx: Context, ns: str, name: str) -> str | None:
    """The sidecarHash in the stored status: the body kopf handed over may predate our last status write,
    and a stale hash would roll the workloads twice."""
    current = ctx.kube.get(kube.tunnels(ns, name)) or {}
    return (current.get("status") or {}).get("sidecarHash")


def _report_route_changes(
    tunnel: Mapping[str, Any], previous: Mapping[str, Any], unresolved: list[Any], emit: Emit
) -> None:
    """One Warning per newly broken route (not one per timer tick), one Normal when all resolve again."""
    before = {r.get("name"): r.get("message") for r in previous.get("routes") or [] if not r.get("resolved")}
    for u in unresolved:
        if before.get(u.route.name) != u.message:
            emit(tunnel, "Warning", u.reason, u.message)
    if before and not unresolved:
        emit(tunnel, "Normal", "RoutesResolved", "every route resolves to a Service port again")


def _write_status(ctx: Context, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    try:
        ctx.kube.merge_patch(kube.tunnels(ns, name, "status"), {"status": status})
    except KubeError as exc:
        if not exc.not_found:  # deleted meanwhile: nothing to report on
            raise
    return status


def _apply_config_map(k: Kube, body: dict[str, Any]) -> bool:
    """Create or update; True when the content changed."""
    meta = body["metadata"]
    path = kube.core(meta["namespace"], "configmaps", meta["name"])
    current = k.get(path)
    if current is None:
        k.create(kube.core(meta["namespace"], "configmaps"), body)
        return True
    if current.get("data") == body["data"] and (current.get("metadata") or {}).get("ownerReferences"):
        return False
    k.merge_patch(
        path,
        {
            "metadata": {
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
            "data": body["data"],
        },
    )
    return bool(current.get("data") != body["data"])


def _apply_connector(ctx: Context, tunnel: Mapping[str, Any], spec: TunnelSpec) -> ConnectorCounts:
    desired = connector_deployment(tunnel, spec, ctx.defaults)
    meta = desired["metadata"]
    # Compare a hash of what the operator wants, not the live object (the server adds defaults).
    wanted = digest(desired)
    meta["annotations"] = {SPEC_HASH: wanted}
    path = kube.apps(meta["namespace"], "deployments", meta["name"])
    current = ctx.kube.get(path)
    if current is None:
        current = ctx.kube.create(kube.apps(meta["namespace"], "deployments"), desired)
    elif ((current.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH) != wanted:
        current = ctx.kube.merge_patch(path, {"metadata": meta, "spec": desired["spec"]})
    st = current.get("status") or {}
    available = any(
        c.get("type") == "Available" and c.get("status") == "True" for c in st.get("conditions") or []
    )
    ready = int(st.get("readyReplicas") or 0)
    return ConnectorCounts(
        exists=True,
        replicas=int(st.get("replicas") or 0),
        ready=ready,
        available=available and ready >= min(1, spec.connector_replicas),
    )


def _delete_connector(k: Kube, ns: str, deployment: str, label: str, tunnel: str) -> None:
    """A Tunnel switched to Sidecar mode leaves no connector behind (nor one under its pre-rename name);
    only a Deployment labelled as this Tunnel's is deleted."""
    path = kube.apps(ns, "deployments", deployment)
    current = k.get(path)
    if current is not None and ((current.get("metadata") or {}).get("labels") or {}).get(label) == tunnel:
        k.delete(path)


def _ready_connector_pods(k: Kube, ns: str, name: str) -> list[tuple[str, str]]:
    """(name, pod IP) of each ready pod of the Tunnel's connector Deployment (their sidecar's admin port)."""
    out = []
    for pod in k.items(kube.core(ns, "pods"), f"{names.CONNECTOR_LABEL}={name}", cached=True):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and pod_is_ready(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            out.append((str(pod["metadata"].get("name", "")), str(ip)))
    return out


def _count_pods(k: Kube, ns: str, name: str, spec: TunnelSpec) -> tuple[PodCounts, list[tuple[str, str]]]:
    """The counts, and (name, pod IP) of each ready pod carrying this Tunnel's sidecar."""
    assert spec.selector is not None
    selector = ",".join(
        filter(None, [to_string(spec.selector), f"{names.INJECT_LABEL}={names.INJECT_ENABLED}"])
    )
    selected = injected = ready = 0
    ready_pods: list[tuple[str, str]] = []
    # Counts refreshed every few seconds need no consistent read (which waits for the watch cache).
    for pod in k.items(kube.core(ns, "pods"), selector, cached=True):
        pmeta = pod.get("metadata") or {}
        if pmeta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        selected += 1
        if (pmeta.get("annotations") or {}).get(names.INJECTED_ANNOTATION) == name:
            injected += 1
            if pod_is_ready(pod):
                ready += 1
                ip = (pod.get("status") or {}).get("podIP")
                if ip:
                    ready_pods.append((str(pmeta.get("name", "")), str(ip)))
    return PodCounts(selected, injected, ready), ready_pods


def roll_workloads(k: Kube, ns: str, spec: TunnelSpec, reason: str, now: str) -> list[str]:
    """Bump the pod template of every workload the Tunnel selects; returns "kind/name" of each."""
    if spec.selector is None:
        return []
    rolled = []
    for plural in WORKLOAD_KINDS:
        for wl_name in workloads_to_roll(spec.selector, k.items(kube.apps(ns, plural))):
            try:
                k.merge_patch(kube.apps(ns, plural, wl_name), roll_patch(reason, now))
            except KubeError as exc:
                if exc.not_found:
                    continue
                raise
            rolled.append(f"{plural[:-1]}/{wl_name}")
            ROLLOUTS.inc()
    return rolled


def finalize(ctx: Context, tunnel: Mapping[str, Any], emit: Emit) -> None:
    """On deletion: roll the selected workloads so their pods lose the sidecar. Never raises and never
    blocks: a namespace being deleted, an invalid spec or an API error all just let the Tunnel go.
    The ConfigMap and the connector go with the Tunnel through their ownerReferences."""
    meta = tunnel["metadata"]
    ns, name = meta["namespace"], meta["name"]
    try:
        namespace = ctx.kube.get(kube.namespace(ns))
        if namespace is None or (namespace.get("metadata") or {}).get("deletionTimestamp"):
            return
        spec = parse_spec(tunnel.get("spec") or {})
        if spec.mode == "Sidecar":
            rolled = roll_workloads(ctx.kube, ns, spec, f"Tunnel {name} deleted", now_iso())
            if rolled:
                emit(
                    tunnel,
                    "Normal",
                    "WorkloadsRolled",
                    f"the Tunnel is deleted; rolling {', '.join(rolled)} so their pods drop the sidecar",
                )
    except (SpecError, KubeError) as exc:
        log.warning("tunnel %s/%s: cleanup skipped: %s", ns, name, exc)
    except Exception:  # the finalizer must go in every case; the log keeps the evidence
        log.exception("tunnel %s/%s: cleanup failed; letting the deletion proceed", ns, name)
    finally:
        forget(ns, name)
