"""replicasFrom.endpointSlices: the config's shape, the ready count over slices (one per pod, the edge
itself unless terminating, never 0), and an unreachable API keeping the last count announced."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from tests.conftest import serve_app

from mproxy.ca import CertificateAuthority
from mproxy.config.edge import load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.replicas import EndpointSlicesSource
from mproxy.edge import endpointslices
from mproxy.edge.endpointslices import SliceCounter, ready_count
from mproxy.metrics.replicas import ReplicaMetrics

BASE = {"auth": {"secretFile": "/s"}, "replicas": 2}


def endpoint(pod: str, ip: str, ready: bool | None = True, terminating: bool = False) -> dict[str, Any]:
    conditions: dict[str, Any] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": [ip], "conditions": conditions,
            "targetRef": {"kind": "Pod", "namespace": "ns", "name": pod}}


def test_the_source_loads_with_defaults_and_round_trips() -> None:
    cfg = load_edge_config(BASE | {"replicasFrom": {"endpointSlices": {"service": "mproxy-edge-tunnel"}}})
    assert cfg.replicas_from == EndpointSlicesSource(service="mproxy-edge-tunnel")
    assert load_edge_config(cfg.to_dict()) == cfg
    assert load_edge_config(BASE).replicas_from is None
    assert "replicasFrom" not in load_edge_config(BASE).to_dict()


@pytest.mark.parametrize(("source", "message"), [
    ({}, "replicasFrom: needs endpointSlices"),
    ({"endpointSlices": {}}, "replicasFrom.endpointSlices.service: is required"),
    ({"endpointSlices": {"service": "Edge_Tunnel"}}, "service: must be a Kubernetes name"),
    ({"endpointSlices": {"service": "e", "namespace": "a.b"}}, "namespace: must be a Kubernetes name"),
    ({"endpointSlices": {"service": "e", "apiServer": "http://10.0.0.1"}}, "apiServer: must be an https://"),
    ({"endpointSlices": {"service": "e", "watchSeconds": 0}}, "watchSeconds: must be 1-3600"),
    ({"endpointSlices": {"service": "e", "selector": "x"}}, "endpointSlices.selector: unknown field"),
])
def test_a_bad_source_is_named_by_its_path(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_edge_config(BASE | {"replicasFrom": source})


def test_ready_count_is_one_per_ready_pod() -> None:
    v4 = {"endpoints": [endpoint("a", "10.0.0.1"), endpoint("b", "10.0.0.2", ready=None),
                        endpoint("c", "10.0.0.3", ready=False)]}
    v6 = {"endpoints": [endpoint("a", "fd00::1"), endpoint("b", "fd00::2")]}  # dual stack: same pods
    assert ready_count({"v4": v4, "v6": v6}) == 2
    assert ready_count({"v4": v4}, self_name="c") == 3  # this edge counts before its probe passes
    gone = {"endpoints": [endpoint("a", "10.0.0.1"), endpoint("c", "10.0.0.3", False, terminating=True)]}
    assert ready_count({"s": gone}, self_name="c") == 1
    assert ready_count({}) == 1  # never announce 0
    no_ref = {"endpoints": [{"addresses": ["10.0.0.9"]}, {"addresses": []}, "junk"]}
    assert ready_count({"s": no_ref}) == 1


async def test_an_unreachable_api_keeps_the_last_count(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "token").write_text("t")
    ca = CertificateAuthority.create("unused").write_cert(tmp_path / "ca.pem")  # refused before TLS
    source = EndpointSlicesSource(service="e", namespace="ns", api_server=f"https://127.0.0.1:{port}",
                                  token_file=str(tmp_path / "token"), ca_file=str(ca))
    registry = CollectorRegistry()
    metrics = ReplicaMetrics(registry, live=True)
    seen: list[int] = []
    counter = SliceCounter(source, "edge-0", seen.append, metrics, initial=3)
    counter.start()
    for _ in range(500):
        await asyncio.sleep(0.02)
        if registry.get_sample_value("mproxy_edge_replicas_source_errors_total"):
            break
    await counter.close()
    assert registry.get_sample_value("mproxy_edge_replicas_source_errors_total") == 1
    assert registry.get_sample_value("mproxy_edge_replicas_source_up") == 0
    assert registry.get_sample_value("mproxy_edge_replicas_announced") == 3
    assert seen == [] and counter.count == 3


class FakeApi:
    """A real HTTPS server on loopback answering the two requests the counter makes: a list, then watches
    that play `script` (lines of JSON events, or raw bytes) and end."""

    def __init__(self, items: list[dict[str, Any]], watches: list[list[bytes]]) -> None:
        self.items, self.watches = items, watches
        self.tokens: list[str] = []
        self.lists = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.tokens.append(request.headers.get("Authorization", ""))
        assert request.query["labelSelector"] == "kubernetes.io/service-name=edges"
        if request.query.get("watch") != "true":
            self.lists += 1
            return web.json_response({"metadata": {"resourceVersion": "10"}, "items": self.items})
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in self.watches.pop(0) if self.watches else []:
            await resp.write(line)
            await asyncio.sleep(0.01)
        if not self.watches:
            await asyncio.sleep(0.5)  # the last watches stay open a while
        return resp


def event(kind: str, name: str, *endpoints: dict[str, Any], version: str = "11") -> bytes:
    obj = {"metadata": {"name": name, "resourceVersion": version}, "endpoints": list(endpoints)}
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


async def test_list_then_watch_events_with_a_relist_after_410(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("fake api")
    ctx = ca.issue(["127.0.0.1"]).server_context(tmp_path, "api")
    a, b, c = endpoint("a", "10.0.0.1"), endpoint("b", "10.0.0.2"), endpoint("c", "10.0.0.3")
    api = FakeApi([{"metadata": {"name": "s1"}, "endpoints": [a, b]}], [
        [event("ADDED", "s2", c), event("BOOKMARK", "", version="12")],  # 3
        [event("MODIFIED", "s1", a, endpoint("b", "10.0.0.2", ready=False)),  # 2
         event("DELETED", "s2"),  # 1
         b'{"type": "ERROR", "object": {"code": 410}}\n'],  # list again: 2
        [event("MODIFIED", "s1", a, b, c, version="20")[:40]],  # cut mid-line: never applied
        [],
    ])
    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices", api.handle)
    runner, port = await serve_app(app, ctx)
    token = tmp_path / "token"
    token.write_text("first\n")
    source = EndpointSlicesSource(service="edges", namespace="ns", api_server=f"https://127.0.0.1:{port}",
                                  token_file=str(token), ca_file=str(ca.write_cert(tmp_path / "ca.pem")),
                                  watch_seconds=5)
    registry = CollectorRegistry()
    seen: list[int] = []
    counter = SliceCounter(source, "a", seen.append, ReplicaMetrics(registry, live=True), initial=5)
    counter.start()
    try:
        for _ in range(1000):  # done in ~0.5 s; the bound is for a loaded machine
            await asyncio.sleep(0.02)
            if api.lists == 2:
                token.write_text("second\n")  # a rotated token is read on the next request
            if len(seen) >= 5 and api.tokens[-1] == "Bearer second":
                break
    finally:
        await counter.close()
        await runner.cleanup()
    assert seen == [2, 3, 2, 1, 2], seen
    assert "Bearer first" in api.tokens and api.tokens[-1] == "Bearer second"
    assert registry.get_sample_value("mproxy_edge_replicas_source_up") == 1
    assert registry.get_sample_value("mproxy_edge_replicas_announced") == 2


async def test_an_oversized_watch_event_is_an_error_not_a_growing_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpointslices, "MAX_OBJECT_BYTES", 4096)
    await _first_error(tmp_path, FakeApi([], [[b"{" + b" " * 10_000]]))  # no newline, ever


async def _first_error(tmp_path: Path, api: FakeApi) -> None:
    """Run a counter against `api` until its first failed request: counted once, the source down."""
    ca = CertificateAuthority.create("fake api")
    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices", api.handle)
    runner, port = await serve_app(app, ca.issue(["127.0.0.1"]).server_context(tmp_path, "api"))
    (tmp_path / "token").write_text("t")
    source = EndpointSlicesSource(service="edges", namespace="ns", api_server=f"https://127.0.0.1:{port}",
                                  token_file=str(tmp_path / "token"),
                                  ca_file=str(ca.write_cert(tmp_path / "ca.pem")))
    registry = CollectorRegistry()
    counter = SliceCounter(source, "a", lambda _: None, ReplicaMetrics(registry, live=True), initial=2)
    counter.start()
    try:
        for _ in range(1000):
            await asyncio.sleep(0.02)
            if registry.get_sample_value("mproxy_edge_replicas_source_errors_total"):
                break
    finally:
        await counter.close()
        await runner.cleanup()
    assert registry.get_sample_value("mproxy_edge_replicas_source_errors_total") == 1
    assert registry.get_sample_value("mproxy_edge_replicas_source_up") == 0


class ForbiddenWatch(FakeApi):
    """Lists, then refuses the watch as an API server does without the `watch` verb in the Role."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return await super().handle(request)
        return web.json_response({"kind": "Status", "message": 'cannot watch resource "endpointslices"'},
                                 status=403)


async def test_a_refused_watch_says_which_permission_is_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger=endpointslices.log.name):
        await _first_error(tmp_path, ForbiddenWatch([], []))
    assert "HTTP 403: the edge's service account may not list endpointslices" in caplog.text
    assert 'cannot watch resource "endpointslices"' in caplog.text  # the API server's own words
