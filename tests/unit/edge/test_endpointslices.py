"""replicasFrom.endpointSlices: the config's shape, the ready count over slices (one per pod, the edge
itself unless terminating, never 0), and an unreachable API keeping the last count announced."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mproxy.config.edge import load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.replicas import EndpointSlicesSource
from mproxy.edge.endpointslices import SliceCounter, ready_count
from mproxy.metrics.replicas import ReplicaMetrics
from mproxy.tls import CertificateAuthority

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
    for _ in range(100):
        await asyncio.sleep(0.02)
        if registry.get_sample_value("mproxy_edge_replicas_source_errors_total"):
            break
    await counter.close()
    assert registry.get_sample_value("mproxy_edge_replicas_source_errors_total") == 1
    assert registry.get_sample_value("mproxy_edge_replicas_source_up") == 0
    assert registry.get_sample_value("mproxy_edge_replicas_announced") == 3
    assert seen == [] and counter.count == 3
