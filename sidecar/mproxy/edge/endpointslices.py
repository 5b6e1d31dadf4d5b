"""The announced replica count, read live from this edge's own headless Service's EndpointSlices, so an
HPA (or `kubectl scale`) changes what sidecars aim for without a rollout.

    counter = SliceCounter(source, edge_id, on_count=lambda n: ..., metrics=ReplicaMetrics(registry))
    counter.start()              # list, then watch; re-list after every watch ends or fails
    ...
    await counter.close()

The count is the number of distinct ready endpoints over the Service's slices (`kubernetes.io/service-name`),
one per pod even when a dual-stack Service keeps an IPv4 and an IPv6 slice. This edge's own endpoint
counts as ready unless terminating: it is answering tunnels, and its readiness probe may not have passed
yet. Never below 1. Until the first list succeeds, and whenever the API is unreachable, the last count
stays announced (at first the static `replicas`), so an API outage never changes what sidecars expect.

Plain aiohttp against the API (a bearer token re-read on every request, since bound tokens rotate, and
the service account CA): the data plane does not import the kubernetes client. Bounded: at most
MAX_SLICES slices held and MAX_OBJECT_BYTES per list body or watch event; a larger answer is an error
(logged, retried with backoff), never a growing buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from mproxy.config.replicas import SERVICE_ACCOUNT_DIR, EndpointSlicesSource
from mproxy.metrics.replicas import ReplicaMetrics

__all__ = ["MAX_OBJECT_BYTES", "MAX_SLICES", "SliceCounter", "SliceError", "ready_count"]

log = logging.getLogger("mproxy.edge.replicas")

MAX_SLICES = 1000  # slices of one Service (the controller puts up to 100 endpoints in each)
MAX_OBJECT_BYTES = 8 << 20  # one list body or one watch event line
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # by consecutive failures
REQUEST_TIMEOUT = 15.0  # connect, and a list's whole answer
SERVICE_LABEL = "kubernetes.io/service-name"


class SliceError(Exception):
    """The API could not be asked or answered something unusable; the message says what to fix."""


def _key(endpoint: Mapping[str, Any]) -> str | None:
    ref = endpoint.get("targetRef")
    if isinstance(ref, Mapping) and ref.get("name"):
        return f"{ref.get('kind', '')}/{ref.get('namespace', '')}/{ref['name']}"
    addresses = endpoint.get("addresses")
    if isinstance(addresses, list) and addresses and isinstance(addresses[0], str):
        return addresses[0]
    return None


def _is_self(endpoint: Mapping[str, Any], self_name: str) -> bool:
    ref = endpoint.get("targetRef")
    return isinstance(ref, Mapping) and ref.get("kind", "Pod") == "Pod" and ref.get("name") == self_name


def ready_count(slices: Mapping[str, Mapping[str, Any]], self_name: str | None = None) -> int:
    """Distinct ready endpoints over `slices` (a nil `ready` means ready, as the API defines it); the
    endpoint of pod `self_name` counts unless terminating."""
    ready: set[str] = set()
    for obj in slices.values():
        for endpoint in obj.get("endpoints") or ():
            if not isinstance(endpoint, Mapping):
                continue
            key = _key(endpoint)
            if key is None:
                continue
            conditions = endpoint.get("conditions") or {}
            if self_name is not None and _is_self(endpoint, self_name):
                if conditions.get("terminating") is not True:
                    ready.add(key)
            elif conditions.get("ready") is not False:
                ready.add(key)
    return max(1, len(ready))


def _api_server(source: EndpointSlicesSource) -> str:
    if source.api_server:
        return source.api_server
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise SliceError("KUBERNETES_SERVICE_HOST is not set: run the edge in a pod, or set "
                         "replicasFrom.endpointSlices.apiServer")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _namespace(source: EndpointSlicesSource) -> str:
    if source.namespace:
        return source.namespace
    with contextlib.suppress(OSError):
        found = Path(SERVICE_ACCOUNT_DIR, "namespace").read_text().strip()
        if found:
            return found
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    raise SliceError("no namespace: set replicasFrom.endpointSlices.namespace (or POD_NAMESPACE)")


class SliceCounter:
    def __init__(self, source: EndpointSlicesSource, self_name: str, on_count: Callable[[int], None],
                 metrics: ReplicaMetrics, initial: int) -> None:
        self.source = source
        self.self_name = self_name
        self.count = initial
        self._on_count = on_count
        self._metrics = metrics
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        metrics.announced.set(initial)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                base, namespace = _api_server(self.source), _namespace(self.source)
                ctx = ssl.create_default_context(cafile=self.source.ca_file)
                url = (f"{base}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                       f"?labelSelector={quote(f'{SERVICE_LABEL}={self.source.service}')}")
                timeout = aiohttp.ClientTimeout(total=None, connect=REQUEST_TIMEOUT,
                                                sock_read=self.source.watch_seconds + REQUEST_TIMEOUT)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    version = await self._list(session, url, ctx)
                    self._recovered()
                    while version is not None:
                        version = await self._watch(session, url, ctx, version)
                        failures = 0  # a watch ran to its end: the API works (a list alone may not)
            except asyncio.CancelledError:
                raise
            except (SliceError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self._failed(str(exc) or type(exc).__name__)
                failures += 1
            except Exception as exc:  # a bug here must not stop the edge: keep the last count, retry
                log.exception("reading EndpointSlices failed")
                self._failed(repr(exc))
                failures += 1
            # After 410 Gone (failures 0) list again after the shortest pause; errors back off to 30 s.
            await asyncio.sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])

    def _headers(self) -> dict[str, str]:
        try:
            token = Path(self.source.token_file).read_text().strip()
        except OSError as exc:
            raise SliceError(f"cannot read the service account token {self.source.token_file}: "
                             f"{exc.strerror or exc}; set the edge's automountServiceAccountToken, or "
                             "replicasFrom.endpointSlices.tokenFile") from exc
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def _list(self, session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext) -> str | None:
        async with session.get(url, headers=self._headers(), ssl=ctx,
                               timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
            body = await self._read_body(resp)
        doc = json.loads(body)
        items = doc.get("items") or []
        if len(items) > MAX_SLICES:
            raise SliceError(f"{len(items)} EndpointSlices for Service {self.source.service} (at most "
                             f"{MAX_SLICES} are read)")
        self._slices = {item["metadata"]["name"]: item for item in items}
        self._recount()
        version = doc.get("metadata", {}).get("resourceVersion")
        return str(version) if version else None

    async def _require_ok(self, resp: aiohttp.ClientResponse) -> None:
        """A SliceError saying what an HTTP status other than 200 means, with the API server's message."""
        if resp.status != 200:
            raise SliceError(self._status_problem(resp.status, (await resp.content.read(2048)).decode(
                "utf-8", "replace")))

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        await self._require_ok(resp)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > MAX_OBJECT_BYTES:
                raise SliceError(f"the EndpointSlice list is over {MAX_OBJECT_BYTES} bytes")
        return bytes(body)

    def _status_problem(self, status: int, text: str) -> str:
        hint = {401: "the token was refused (expired, or not this cluster's)",
                403: "the edge's service account may not list endpointslices.discovery.k8s.io in its "
                     "namespace (the chart's Role: edge.replicasFromEndpointSlices)"}.get(status, "")
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(text).get("message", ""))[:300]
        return f"EndpointSlices for Service {self.source.service}: HTTP {status}" + (
            f": {hint}" if hint else "") + (f" ({message})" if message else "")

    async def _watch(self, session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext,
                     version: str) -> str | None:
        """Apply one watch request's events; the version to watch on from, or None to list afresh."""
        watch = (f"{url}&watch=true&allowWatchBookmarks=true&resourceVersion={quote(version)}"
                 f"&timeoutSeconds={int(self.source.watch_seconds)}")
        async with session.get(watch, headers=self._headers(), ssl=ctx) as resp:
            await self._require_ok(resp)
            pending = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line, pending = bytes(pending[:end]), pending[end + 1:]
                    if line.strip():
                        next_version = self._apply(json.loads(line))
                        if next_version is None:
                            return None
                        version = next_version
                if len(pending) > MAX_OBJECT_BYTES:
                    raise SliceError(f"an EndpointSlice watch event is over {MAX_OBJECT_BYTES} bytes")
        return version  # the server ended the watch (timeoutSeconds): watch on from here

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # 410 Gone: the version is too old, list afresh
            return None
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if kind in ("ADDED", "MODIFIED") and name:
            if name not in self._slices and len(self._slices) >= MAX_SLICES:
                raise SliceError(f"over {MAX_SLICES} EndpointSlices for Service {self.source.service}")
            self._slices[name] = obj
        elif kind == "DELETED" and name:
            self._slices.pop(name, None)
        if kind != "BOOKMARK":
            self._recount()
        return str(meta.get("resourceVersion") or "") or None

    # -- results -------------------------------------------------------------------------------------

    def _recount(self) -> None:
        count = ready_count(self._slices, self.self_name)
        if count != self.count:
            log.info("announcing %d edge replicas (ready endpoints of Service %s, was %d)", count,
                     self.source.service, self.count)
            self.count = count
            self._metrics.announced.set(count)
            self._on_count(count)

    def _failed(self, problem: str) -> None:
        self._metrics.errors.inc()
        self._metrics.source_up.set(0)
        if problem != self._last_error:
            log.warning("cannot read the replica count from EndpointSlices (%s); still announcing %d, "
                        "retrying", problem, self.count)
        self._last_error = problem

    def _recovered(self) -> None:
        self._metrics.source_up.set(1)
        if self._last_error is not None:
            log.info("reading EndpointSlices of Service %s again", self.source.service)
        self._last_error = None
