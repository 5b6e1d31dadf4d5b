"""kopf handlers of the Gateway API kinds: every change reconciles all mproxy Gateways.

Watch events only (kopf.on.event): no finalizers and no kopf annotations on objects users own.
The connector Deployments are garbage-collected with their Gateway (ownerReferences).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mproxy_operator import metrics
from mproxy_operator.gateway_api import names
from mproxy_operator.gateway_api.reconcile import GatewayAPI
from mproxy_operator.kube import KubeError

log = logging.getLogger("mproxy_operator.gateway_api")

WATCHED = ("gatewayclasses", "gateways", *names.ROUTE_PLURALS.values())


def register(reg: kopf.OperatorRegistry, api: GatewayAPI) -> None:
    def run(trigger: str) -> None:
        try:
            api.reconcile_all()
        except KubeError as exc:  # the next event or the refresh retries
            metrics.RECONCILE_ERRORS.labels(trigger).inc()
            log.warning("gateway api: Kubernetes API call failed, will retry: %s", exc)

    def on_change(**_: Any) -> None:
        run("gateway-api")

    for plural in WATCHED:
        kopf.on.event(names.GROUP, names.VERSION, plural, registry=reg, id=f"gateway-api-{plural}")(on_change)
    kopf.on.event(names.GROUP, "v1beta1", "referencegrants", registry=reg, id="gateway-api-referencegrants")(
        on_change
    )

    def is_params_ref(namespace: str | None, name: str | None, **_: Any) -> bool:
        return (namespace or "", name or "") in api.params_refs

    # A class's parameters changed (another edge, token Secret, replicas): every Gateway of it.
    @kopf.on.event("", "v1", "configmaps", registry=reg, id="gateway-api-parameters", when=is_params_ref)
    def on_parameters(**_: Any) -> None:
        run("gateway-api")

    def is_cert_ref(namespace: str | None, name: str | None, **_: Any) -> bool:
        return (namespace or "", name or "") in api.cert_refs

    # Secrets are watched only for the certificateRefs of HTTPS listeners (read access to Secrets is
    # granted only with gatewayAPI.enabled); their contents are never logged.
    @kopf.on.event("", "v1", "secrets", registry=reg, id="gateway-api-certificates", when=is_cert_ref)
    def on_certificate(**_: Any) -> None:
        run("gateway-api")

    @kopf.on.event(
        "apps", "v1", "deployments", registry=reg, id="gateway-api-connectors",
        labels={names.GATEWAY_LABEL: kopf.PRESENT},
    )
    def on_connector(**_: Any) -> None:
        run("gateway-api")
