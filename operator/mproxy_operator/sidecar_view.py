"""What each ready pod's sidecar sees of its edges: the operator GETs `/status` on the sidecar's admin port
(`spec.metrics.port`, the one Prometheus scrapes) at the pod IP of each ready selected pod (Sidecar mode)
or connector pod (Connector mode), on every reconcile of a Tunnel (so every `--status-interval`), when
`--sidecar-status` is on (the chart's default).

Why this path: the sidecar already knows, per edge URL, how many edges are announced and how many it
holds (`edges[]` in /status), and the operator already lists the selected pods with their IPs. Reading it
needs no new RBAC at all. The alternatives need more: sidecars writing their view into the API (a pod
annotation, a Lease) would mount a token with write rights into every application pod; scraping
Prometheus would make the operator depend on one. The cost is a network path from the operator to each
pod's admin port (a NetworkPolicy guarding the application pods must admit it, as for Prometheus).

Bounded: at most MAX_PODS pods per Tunnel and reconcile (the first by name; the condition says how many
were checked), CONCURRENCY requests at once across all Tunnels (one shared pool), TIMEOUT seconds each,
MAX_BODY bytes read, and BUDGET seconds for one Tunnel's pods together: a reconcile never waits longer
(pods not asked by then are reported "not checked"), however many sidecars are blackholed. No proxy from
the environment is used: pod IPs are never behind one.
"""

from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BUDGET", "CONCURRENCY", "MAX_BODY", "MAX_PODS", "TIMEOUT", "SidecarView", "probe", "summarize"]

MAX_PODS = 64
CONCURRENCY = 8
TIMEOUT = 2.0
BUDGET = 5.0
MAX_BODY = 1 << 20

_pool = concurrent.futures.ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="sidecar-status")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class SidecarView:
    pod: str
    expected: int = 0  # edges its URLs announce, summed over the URLs
    connected: int = 0  # edges it holds tunnels to (per URL at most the expected count)
    error: str | None = None  # no usable answer: why

    @property
    def missing(self) -> bool:
        return self.error is None and self.connected < self.expected


def summarize(pod: str, doc: object) -> SidecarView:
    """One pod's view from its /status document (pure)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("edges"), list):
        return SidecarView(pod, error="its /status has no edges list (a sidecar older than the operator?)")
    expected = connected = 0
    for pool in doc["edges"]:
        if not isinstance(pool, Mapping):
            continue
        want, have = pool.get("expectedEdges"), pool.get("connectedEdges")
        if isinstance(want, int) and isinstance(have, int) and want >= 0 and have >= 0:
            expected += want
            connected += min(have, want)
    return SidecarView(pod, expected, connected)


def _read(pod: str, ip: str, port: int) -> SidecarView:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with _opener.open(f"http://{host}:{port}/status", timeout=TIMEOUT) as resp:
            body = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        return SidecarView(pod, error=f"its admin port answered HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return SidecarView(pod, error=f"no answer from {host}:{port} ({reason})")
    if len(body) > MAX_BODY:
        return SidecarView(pod, error=f"its /status is over {MAX_BODY} bytes")
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return SidecarView(pod, error="its /status is not JSON")
    return summarize(pod, doc)


def probe(targets: Sequence[tuple[str, str]], port: int) -> list[SidecarView]:
    """Read (pod name, pod IP) targets, the first MAX_PODS by name, within BUDGET seconds; never raises."""
    chosen = sorted(targets)[:MAX_PODS]
    futures = [_pool.submit(_read, pod, ip, port) for pod, ip in chosen]
    concurrent.futures.wait(futures, timeout=BUDGET)
    views = []
    for (pod, _ip), future in zip(chosen, futures, strict=True):
        if not future.done():
            future.cancel()  # not started yet: it leaves the shared pool's queue
            views.append(SidecarView(pod, error=f"not checked within {BUDGET:g} s (too many sidecars not "
                                     "answering at once)"))
            continue
        try:
            views.append(future.result())
        except Exception as exc:  # a bug in _read: that pod is unknown, the reconcile goes on
            views.append(SidecarView(pod, error=f"not checked ({type(exc).__name__})"))
    return views
