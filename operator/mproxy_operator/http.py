"""/healthz, /readyz and /metrics of the operator, on their own port (never the webhook's)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mproxy_operator import metrics, names

# A pod without the opt-in label: kopf answers it without running the handler, so this probes that the
# server is up and has discovered pods (before that it answers 404) without injecting anything.
_PROBE_REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "mproxy-readiness-probe",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "default",
        "userInfo": {"username": "mproxy-operator-readiness"},
        "dryRun": True,
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        },
    },
}


class Endpoints:
    def __init__(self, webhook_url: str, ca_file: str, kopf_ready: Callable[[], bool]) -> None:
        self._webhook_url = webhook_url
        self._ca_file = ca_file
        self._kopf_ready = kopf_ready
        self._webhook_ok = False

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        if not self._kopf_ready():
            return web.Response(status=503, text="starting: kopf is not ready\n")
        if not self._webhook_ok:
            self._webhook_ok = await self._probe_webhook()
        if not self._webhook_ok:
            return web.Response(status=503, text="starting: the admission webhook does not serve pods yet\n")
        return web.Response(text="ok\n")

    async def _probe_webhook(self) -> bool:
        context = ssl.create_default_context(cafile=self._ca_file)
        context.check_hostname = False  # the probe goes to loopback; the apiserver checks the name
        try:
            session = ClientSession(connector=TCPConnector(ssl=context), timeout=ClientTimeout(total=2))
            async with (
                session,
                session.post(
                    self._webhook_url,
                    data=json.dumps(_PROBE_REVIEW),
                    headers={"Content-Type": "application/json"},
                ) as resp,
            ):
                return resp.status == 200
        except (OSError, TimeoutError):
            return False

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start(host: str, port: int, endpoints: Endpoints) -> web.AppRunner:
    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", endpoints.healthz),
            web.get("/readyz", endpoints.readyz),
            web.get("/metrics", endpoints.metrics),
        ]
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def webhook_probe_url(host: str, port: int) -> str:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in target and not target.startswith("["):
        target = f"[{target}]"
    return f"https://{target}:{port}{names.WEBHOOK_PATH}"
