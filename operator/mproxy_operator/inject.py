"""Sidecar injection into a pod at admission (pure): which Tunnel applies, and the pod after injection.

The webhook hands kopf `apply_injection` as a patch function; kopf turns the difference into the
JSON patch the apiserver applies. Everything here works on plain dicts, so the tests need no cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from mproxy_operator import names
from mproxy_operator.model import SpecError, TunnelSpec, parse_spec
from mproxy_operator.podspec import OWN_VOLUMES, SidecarDefaults, sidecar_container, sidecar_volumes
from mproxy_operator.render import digest
from mproxy_operator.selectors import matches


class InjectionRefused(Exception):
    """The pod cannot take the sidecar (say, a name clash); the message tells the user what to change."""


@dataclass(frozen=True, slots=True)
class Choice:
    name: str
    spec: TunnelSpec
    others: tuple[str, ...] = ()  # other Tunnels that also select the pod (ignored, with a warning)


def is_injected(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if names.INJECTED_ANNOTATION in (meta.get("annotations") or {}):
        return True
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    return any(c.get("name") == names.SIDECAR_NAME for c in containers)


def choose_tunnel(pod: Mapping[str, Any], tunnels: Iterable[Mapping[str, Any]]) -> Choice | None:
    """The Sidecar-mode Tunnel whose selector matches the pod; the first by name when several do.
    Tunnels being deleted or with an unusable spec are skipped."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    candidates: list[tuple[str, TunnelSpec]] = []
    for tunnel in tunnels:
        meta = tunnel.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = parse_spec(tunnel.get("spec") or {})
        except SpecError:
            continue
        if spec.mode != "Sidecar" or spec.selector is None:
            continue
        if matches(spec.selector, labels):
            candidates.append((str(meta.get("name")), spec))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0])
    name, spec = candidates[0]
    return Choice(name, spec, tuple(c[0] for c in candidates[1:]))


def sidecar_hash(tunnel_name: str, spec: TunnelSpec, defaults: SidecarDefaults, *, native: bool) -> str:
    """Changes exactly when running sidecars would need a restart to pick the change up."""
    volumes = sidecar_volumes(spec, names.config_map_name(tunnel_name))
    return digest([sidecar_container(spec, defaults, native=native), volumes])


def apply_injection(
    pod: MutableMapping[str, Any],
    tunnel_name: str,
    spec: TunnelSpec,
    defaults: SidecarDefaults,
    *,
    native: bool,
) -> None:
    """Add the sidecar, its volumes, label and annotations to `pod` in place. Raises InjectionRefused."""
    pod_spec = pod.setdefault("spec", {})
    taken = {v.get("name") for v in pod_spec.get("volumes") or []} & OWN_VOLUMES
    if taken:
        raise InjectionRefused(
            f"the pod already has a volume named {', '.join(sorted(taken))}, which the mproxy sidecar needs; "
            f"rename it, or label the pod {names.INJECT_LABEL}=disabled to go without the sidecar"
        )
    container = sidecar_container(spec, defaults, native=native)
    # A pod that exposes the same port already would fail to start; say so at admission instead.
    for c in list(pod_spec.get("containers") or []) + list(pod_spec.get("initContainers") or []):
        for p in c.get("ports") or []:
            if p.get("containerPort") == spec.metrics_port:
                raise InjectionRefused(
                    f"container {c.get('name')!r} already uses port {spec.metrics_port}, the sidecar's "
                    f"metrics port; set spec.metrics.port of Tunnel {tunnel_name} to a free port"
                )
    key = "initContainers" if native else "containers"
    pod_spec[key] = [*(pod_spec.get(key) or []), container]
    volumes = sidecar_volumes(spec, names.config_map_name(tunnel_name))
    pod_spec["volumes"] = [*(pod_spec.get("volumes") or []), *volumes]
    meta = pod.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), names.TUNNEL_LABEL: tunnel_name}
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        names.INJECTED_ANNOTATION: tunnel_name,
        names.SIDECAR_HASH_ANNOTATION: sidecar_hash(tunnel_name, spec, defaults, native=native),
    }


def supports_native_sidecars(major: str, minor: str) -> bool:
    """Native sidecars (init containers with restartPolicy Always) are on by default since 1.29."""
    try:
        return (int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)) >= (1, 29)
    except ValueError:
        return False
