"""kopf handlers: thin shims from kopf's callbacks into the plain functions of reconcile and inject.

Every handler has an explicit id (the webhook URL path is the mutate handler's id). The registry is
built per process, so tests can run several operators with different settings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from mproxy_operator import kube, metrics, names
from mproxy_operator.gateway_api.handlers import register as register_gateway_api
from mproxy_operator.gateway_api.reconcile import GatewayAPI
from mproxy_operator.inject import InjectionRefused, apply_injection, choose_tunnel, is_injected
from mproxy_operator.kube import KubeError
from mproxy_operator.model import SpecError, parse_spec
from mproxy_operator.reconcile import Context, finalize, reconcile

log = logging.getLogger("mproxy_operator.handlers")
TUNNEL = (names.GROUP, names.VERSION, names.PLURAL)


@dataclass
class Runtime:
    ctx: Context
    status_interval: float
    webhook_server: Any  # a kopf WebhookServer
    gateway_api: GatewayAPI | None = None  # --gateway-api
    # Admission has its own threads: a storm of reconciles in kopf's pool must not delay pod creation
    # past the webhook's timeout (with failurePolicy Fail that would refuse the pods).
    webhook_executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="webhook")
    )
    _ready_tunnels: dict[tuple[str, str], bool] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def record_ready(self, namespace: str, name: str, ready: bool | None) -> None:
        with self._guard:
            if ready is None:
                self._ready_tunnels.pop((namespace, name), None)
            else:
                self._ready_tunnels[(namespace, name)] = ready
            values = list(self._ready_tunnels.values())
        metrics.TUNNELS.labels("true").set(sum(values))
        metrics.TUNNELS.labels("false").set(len(values) - sum(values))


def emit(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=type_, reason=reason, message=message[:1024])


class TimedWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with every admission review timed into a histogram."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def timed(request: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = "error"
            try:
                response = await fn(request, **kwargs)
                allowed = (response.get("response") or {}).get("allowed")
                result = "allowed" if allowed else "denied"
                return response
            finally:
                metrics.WEBHOOK_SECONDS.labels(result).observe(time.perf_counter() - started)

        async for client_config in super().__call__(timed):
            yield client_config


def _run(rt: Runtime, body: Mapping[str, Any], trigger: str) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    started = time.perf_counter()
    try:
        status = reconcile(rt.ctx, body, emit)
    except KubeError as exc:
        metrics.RECONCILES.labels(trigger, "error").inc()
        metrics.RECONCILE_ERRORS.labels(trigger).inc()
        raise kopf.TemporaryError(f"Kubernetes API call failed, will retry: {exc}", delay=5) from exc
    finally:
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    metrics.RECONCILES.labels(trigger, "ok").inc()
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    rt.record_ready(meta.get("namespace", ""), meta.get("name", ""), ready)
    return status


def _reconcile_by_name(rt: Runtime, namespace: str, name: str, trigger: str) -> None:
    body = rt.ctx.kube.get(kube.tunnels(namespace, name))
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        _run(rt, body, trigger)
    except kopf.TemporaryError as exc:
        log.warning("tunnel %s/%s: %s", namespace, name, exc)


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    on = functools.partial

    @kopf.on.startup(registry=reg, id="configure")
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = rt.webhook_server
        settings.admission.managed = None  # the chart (or the test) owns the webhook configuration
        settings.persistence.finalizer = names.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration"
        )
        settings.posting.reporting_component = "mproxy-operator"
        settings.posting.reporting_instance = socket.gethostname()
        settings.posting.level = logging.WARNING  # kopf's own per-handler chatter stays in the logs
        settings.watching.server_timeout = 270
        # Tunnels' CRD is installed before the operator; watching all CRDs and namespaces for changes
        # would need list/watch on both, which least privilege leaves out.
        settings.scanning.disabled = True
        # A Tunnel deleted while its status timer runs keeps its finalizer until the timer returns; kopf
        # re-checks every `cancellation_polling` seconds (60 by default: a minute-long deletion).
        settings.background.cancellation_polling = 1.0
        settings.background.instant_exit_timeout = 0.1
        settings.execution.max_workers = 16

    @kopf.on.login(registry=reg, id="login")
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The very credentials the operator's own client loaded (--kubeconfig or in-cluster).
        config = rt.ctx.kube.configuration
        header = str(
            config.get_api_key_with_prefix("BearerToken")
            or config.get_api_key_with_prefix("authorization")
            or ""
        )
        scheme, _sep, token = header.rpartition(" ")
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
            trust_env=settings.networking.trust_env,
        )

    @kopf.on.resume(*TUNNEL, registry=reg, id="reconcile")
    @kopf.on.create(*TUNNEL, registry=reg, id="reconcile")
    @kopf.on.update(*TUNNEL, registry=reg, id="reconcile")
    def on_change(body: kopf.Body, **_: Any) -> None:
        _run(rt, body, "change")

    @kopf.timer(
        *TUNNEL,
        registry=reg,
        id="refresh",
        interval=rt.status_interval,
        initial_delay=min(rt.status_interval, 5.0),
    )
    def on_timer(body: kopf.Body, **_: Any) -> None:
        _run(rt, body, "timer")

    @kopf.on.delete(*TUNNEL, registry=reg, id="cleanup")
    def on_delete(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        finalize(rt.ctx, body, emit)
        rt.record_ready(namespace or "", name, None)

    @kopf.index(*TUNNEL, registry=reg, id="by_service")
    def by_service(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
        try:
            services = parse_spec(spec).referenced_services()
        except SpecError:
            return {}
        return {(namespace or "", svc): name for svc in services}

    @kopf.on.event("", "v1", "services", registry=reg, id="service-changed")
    def on_service(namespace: str | None, name: str, **kwargs: Any) -> None:
        by_service: kopf.Index[tuple[str, str], str] = kwargs["by_service"]  # the index above, by its id
        for tunnel in sorted(set(by_service.get((namespace or "", name), []))):
            _reconcile_by_name(rt, namespace or "", tunnel, "service")
        if rt.gateway_api is not None and (namespace or "", name) in rt.gateway_api.backends:
            rt.gateway_api.reconcile_all()

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        registry=reg,
        id="connector-changed",
        labels={names.CONNECTOR_LABEL: kopf.PRESENT},
    )
    def on_connector(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        _reconcile_by_name(rt, namespace or "", labels[names.CONNECTOR_LABEL], "connector")

    @kopf.on.mutate(
        "",
        "v1",
        "pods",
        registry=reg,
        id=names.WEBHOOK_HANDLER_ID,
        operations={"CREATE"},
        side_effects=False,
        ignore_failures=False,
        labels={names.INJECT_LABEL: names.INJECT_ENABLED},
    )
    async def inject(
        body: kopf.Body, patch: kopf.Patch, dryrun: bool, warnings: list[str], **_: Any
    ) -> None:
        dry = "true" if dryrun else "false"
        pod = dict(body)
        if is_injected(pod):
            metrics.INJECTIONS.labels("skipped", dry).inc()
            return
        namespace = body.metadata.namespace or ""
        try:
            # The watch cache as it is: pod creation waits on this call, and a Tunnel made in the
            # last milliseconds is the same race as one made just after the pod.
            list_tunnels = functools.partial(rt.ctx.kube.items, kube.tunnels(namespace), cached=True)
            tunnels = await asyncio.get_running_loop().run_in_executor(rt.webhook_executor, list_tunnels)
        except KubeError as exc:
            metrics.INJECTIONS.labels("refused", dry).inc()
            raise kopf.AdmissionError(
                f"mproxy could not list Tunnels in {namespace}: {exc}", code=503
            ) from exc
        choice = choose_tunnel(pod, tunnels)
        if choice is None:
            metrics.INJECTIONS.labels("skipped", dry).inc()
            warnings.append(
                f"{names.INJECT_LABEL}={names.INJECT_ENABLED} is set but no Tunnel in {namespace} "
                "selects this pod; it starts without the mproxy sidecar"
            )
            return
        if choice.others:
            warnings.append(
                f"Tunnels {', '.join(choice.others)} also select this pod; only {choice.name} is "
                "injected (make the selectors disjoint)"
            )
        inject_fn = on(
            apply_injection,
            tunnel_name=choice.name,
            spec=choice.spec,
            defaults=rt.ctx.defaults,
            native=rt.ctx.native,
        )
        try:
            inject_fn(copy.deepcopy(pod))  # refuse here, with a clear message, rather than inside kopf
        except InjectionRefused as exc:
            metrics.INJECTIONS.labels("refused", dry).inc()
            raise kopf.AdmissionError(f"mproxy cannot inject Tunnel {choice.name}: {exc}", code=400) from exc
        patch.fns.append(inject_fn)
        metrics.INJECTIONS.labels("injected", dry).inc()

    if rt.gateway_api is not None:
        register_gateway_api(reg, rt.gateway_api)
    return reg
