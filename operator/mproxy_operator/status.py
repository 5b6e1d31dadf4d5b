"""The Tunnel's status: counts and conditions (pure). lastTransitionTime moves only when a status flips."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mproxy_operator.model import TunnelSpec
from mproxy_operator.resolve import Resolved, Unresolved
from mproxy_operator.sidecar_view import SidecarView

MAX_LISTED = 5  # pods named in the EdgesConnected message


@dataclass(frozen=True, slots=True)
class PodCounts:
    selected: int = 0  # pods the selector picks (and that opted in to injection)
    injected: int = 0  # of those, pods carrying this Tunnel's sidecar
    ready: int = 0  # injected pods whose Ready condition is True


@dataclass(frozen=True, slots=True)
class ConnectorCounts:
    exists: bool = False
    replicas: int = 0
    ready: int = 0
    available: bool = False


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def condition(
    type_: str,
    ok: bool | None,  # None: Unknown
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    status = "Unknown" if ok is None else "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": since or now,
    }


def _routes_condition(
    resolved: Sequence[Resolved], unresolved: Sequence[Unresolved]
) -> tuple[bool, str, str]:
    if unresolved:
        reasons = sorted({u.reason for u in unresolved})
        reason = reasons[0] if len(reasons) == 1 else "RoutesUnresolved"
        return False, reason, "; ".join(u.message for u in unresolved)
    return True, "AllRoutesResolved", f"{len(resolved)} route(s) resolved to Services"


@dataclass(frozen=True, slots=True)
class EdgeViews:
    """The sidecars' own view of their edges (sidecar_view.probe) and how many ready pods there were."""

    views: tuple[SidecarView, ...] = ()
    ready_pods: int = 0


def _list(parts: Sequence[str]) -> str:
    shown = "; ".join(parts[:MAX_LISTED])
    return shown + (f"; {len(parts) - MAX_LISTED} more" if len(parts) > MAX_LISTED else "")


def edges_condition(edges: EdgeViews) -> tuple[bool | None, str, str]:
    """EdgesConnected: False when a sidecar holds fewer edges than announced, Unknown when one could not
    be asked (or no pod is ready yet), True when every checked sidecar holds all of them."""
    views = edges.views
    checked = (f" (checked {len(views)} of {edges.ready_pods} ready pods)"
               if edges.ready_pods > len(views) else "")
    if not views:
        return None, "NoReadyPods", "no ready pod carries the sidecar yet"
    missing = [f"{v.connected} of {v.expected} edges on pod {v.pod}" for v in views if v.missing]
    errors = [f"pod {v.pod}: {v.error}" for v in views if v.error is not None]
    if missing:
        tail = f"; sidecars not answering: {_list(errors)}" if errors else ""
        return False, "EdgesMissing", _list(missing) + tail + checked
    if errors:
        return None, "SidecarsUnreachable", (
            f"{len(errors)} of {len(views)} sidecars did not answer on their admin port (a NetworkPolicy "
            f"must let the operator reach spec.metrics.port): {_list(errors)}{checked}")
    expected = sorted({v.expected for v in views})
    each = f"{expected[0]}" if len(expected) == 1 else f"{expected[0]}-{expected[-1]}"
    return True, "AllEdgesConnected", (
        f"{len(views)} sidecar(s) hold tunnels to all their edges ({each} each){checked}")


def _edge_counts(edges: EdgeViews | None) -> dict[str, int | None]:
    reporting = [v for v in edges.views if v.error is None] if edges is not None else []
    if edges is None:
        return dict.fromkeys(("sidecarsReporting", "sidecarsMissingEdges", "edgesExpected",
                              "edgesConnected"))
    return {
        "sidecarsReporting": len(reporting),
        "sidecarsMissingEdges": sum(v.missing for v in reporting),
        # The most edges any sidecar expects, and the fewest any holds: the worst pod, at a glance.
        "edgesExpected": max((v.expected for v in reporting), default=0),
        "edgesConnected": min((v.connected for v in reporting), default=0),
    }


def build_status(
    *,
    generation: int,
    spec: TunnelSpec,
    resolved: Sequence[Resolved],
    unresolved: Sequence[Unresolved],
    pods: PodCounts,
    connector: ConnectorCounts,
    config_map: str,
    config_hash: str,
    sidecar_hash: str,
    previous: Iterable[Mapping[str, Any]],
    now: str,
    edges: EdgeViews | None = None,  # None: the sidecars are not asked (--sidecar-status off)
) -> dict[str, Any]:
    prev = list(previous)
    conditions = []
    routes_ok, reason, message = _routes_condition(resolved, unresolved)
    conditions.append(condition("RoutesResolved", routes_ok, reason, message, generation, prev, now))
    if spec.mode == "Connector":
        if not connector.exists:
            wl_ok, wl_reason = False, "DeploymentMissing"
            wl_msg = "the connector Deployment is not created yet"
        elif spec.connector_replicas == 0:
            wl_ok, wl_reason, wl_msg = False, "ScaledToZero", "spec.connector.replicas is 0"
        elif connector.available:
            wl_ok, wl_reason, wl_msg = (
                True,
                "MinimumReplicasAvailable",
                f"{connector.ready} of {spec.connector_replicas} connector replicas ready",
            )
        else:
            wl_ok, wl_reason, wl_msg = (
                False,
                "ReplicasNotReady",
                f"{connector.ready} of {spec.connector_replicas} connector replicas ready",
            )
        conditions.append(condition("ConnectorAvailable", wl_ok, wl_reason, wl_msg, generation, prev, now))
    else:
        if pods.selected == 0:
            wl_ok, wl_reason, wl_msg = (
                False,
                "NoPods",
                "no running pod matches spec.selector and carries the label mproxy.dev/inject=enabled",
            )
        elif pods.injected < pods.selected:
            wl_ok, wl_reason = False, "PodsWithoutSidecar"
            wl_msg = (
                f"{pods.selected - pods.injected} of {pods.selected} selected pods have no sidecar (created "
                "before the Tunnel or while the webhook was down); roll their workloads"
            )
        else:
            wl_ok, wl_reason = True, "AllPodsInjected"
            wl_msg = f"{pods.injected} pod(s) carry the sidecar, {pods.ready} ready"
        conditions.append(condition("SidecarsInjected", wl_ok, wl_reason, wl_msg, generation, prev, now))
    workload = conditions[-1]
    ready = routes_ok and workload["status"] == "True"
    if ready:
        r_reason, r_msg = "Ready", "the tunnel config is rendered and the sidecars are in place"
    elif not routes_ok:
        r_reason, r_msg = "RoutesUnresolved", message
    else:
        r_reason, r_msg = str(workload["reason"]), str(workload["message"])
    conditions.insert(0, condition("Ready", ready, r_reason, r_msg, generation, prev, now))
    # Not part of Ready: a pod with any tunnel carries traffic (as the sidecar's /readyz says); a missing
    # edge is its own signal, like the MproxyTunnelEdgeMissing alert.
    if edges is not None:
        e_ok, e_reason, e_msg = edges_condition(edges)
        conditions.append(condition("EdgesConnected", e_ok, e_reason, e_msg, generation, prev, now))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "configMap": config_map,
        "configHash": config_hash,
        "sidecarHash": sidecar_hash,
        "routes": [
            *({"name": r.route.name, "backend": f"{r.host}:{r.port}", "resolved": True} for r in resolved),
            *(
                {
                    "name": u.route.name,
                    "backend": f"{u.route.service}:{u.route.port}",
                    "resolved": False,
                    "message": u.message,
                }
                for u in unresolved
            ),
        ],
        "conditions": conditions,
    }
    # None deletes a key in the merge patch: the other mode's counts, and the names connector mode's
    # counts had when it was called Gateway mode.
    status.update(gatewayReplicas=None, gatewayReadyReplicas=None)
    if spec.mode == "Connector":
        status.update(
            connectorReplicas=connector.replicas,
            connectorReadyReplicas=connector.ready,
            selectedPods=0,
            injectedPods=0,
            readyPods=0,
        )
    else:
        status.update(selectedPods=pods.selected, injectedPods=pods.injected, readyPods=pods.ready,
                      connectorReplicas=None, connectorReadyReplicas=None)
    status.update(_edge_counts(edges))
    return status


def unchanged(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """True when writing `new` (a merge patch) would not change `old`: the write can be skipped."""
    return all(old.get(k) == v for k, v in new.items() if v is not None) and all(
        k not in old for k, v in new.items() if v is None)


def failed_status(
    generation: int, reason: str, message: str, previous: Iterable[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """When the spec itself is unusable: Ready=False with the reason, nothing else changes."""
    prev = list(previous)
    return {
        "observedGeneration": generation,
        "conditions": [condition("Ready", False, reason, message, generation, prev, now)],
    }
