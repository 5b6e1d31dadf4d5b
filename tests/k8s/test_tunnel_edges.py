"""The Tunnel's EdgesConnected condition on the real control plane (issue 12), with a real sidecar.

The operator (started as tests/k8s/test_operator.py starts it, with the chart's RBAC, plus
--sidecar-status) asks each ready selected pod's sidecar for its edges at the pod IP. The pod is a kwok
pod on a kwok node whose podCIDR is a loopback /29 (tainted, so no other test's pod lands there): its IP
is a 127.x address, where the test runs a real `mproxy sidecar` process whose admin port is the Tunnel's
spec.metrics.port. Real `mproxy edge` processes on 127.0.0.1 serve its two edge URLs. The condition
goes Unknown (nothing answers yet) -> False "1 of 2 edges on pod shop-0" -> True once the second edge runs.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.k8s.test_operator import (
    INJECT,
    NS_LABEL,
    Operator,
    _apply,
    _condition,
    _get,
    operator_fixture,
    secret,
    service,
    tunnel,
    wait_tunnel,
)
from tests.ports import free_port

from mproxy.edge.auth import mint

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

SECRET = b"tunnel-edges-test-secret-0123456789"
TAINT = "mproxy.dev/loopback-test"


operator = operator_fixture("--sidecar-status")


@pytest.fixture
def loopback_node(kube: Any) -> Iterator[tuple[str, str]]:
    """A kwok node handing out pod IPs from a loopback /29; yields (name, CIDR)."""
    name = f"loopback-{uuid.uuid4().hex[:6]}"
    cidr = f"127.0.{random.randint(100, 250)}.0/29"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": [{"key": TAINT, "effect": "NoSchedule"}]},
    }))
    try:
        kube.wait_node_ready(name)
        yield name, cidr
    finally:
        kube.kubectl("delete", "node", name, "--wait=false", check=False)


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []
        (tmp / "secret").write_bytes(SECRET + b"\n")
        (tmp / "token").write_text(mint(SECRET, domains=[], ports=[7022]))

    def start(self, role: str, label: str, cfg: dict[str, Any]) -> None:
        path = self.tmp / f"{role}-{label}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = self.tmp / f"{role}-{label}.log"
        with open(log, "wb") as out:
            args = ["--no-reload"] if role == "sidecar" else []
            proc = subprocess.Popen([sys.executable, "-m", "mproxy", role, "--config", str(path), *args],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.running.append((proc, log))

    def edge(self, label: str, port: int) -> None:
        self.start("edge", label, {
            "id": f"edge-{label}", "replicas": 1, "auth": {"secretFile": str(self.tmp / "secret")},
            "tunnel": {"listen": f"127.0.0.1:{port}", "path": "/t"},
            "http": {"listen": f"127.0.0.1:{free_port(['127.0.0.1'])}"},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3, "authTimeoutSeconds": 2},
            "logging": {"format": "text", "level": "warning"}, "drainSeconds": 0})

    def stop(self) -> None:
        for proc, _ in self.running:
            proc.terminate()
        for proc, log in self.running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")


def test_edges_connected_follows_the_sidecars_own_view(kube: Any, operator: Operator, kube_namespace: str,
                                                        loopback_node: tuple[str, str],
                                                        tmp_path: Path) -> None:
    ns = kube_namespace
    kube.kubectl("label", "namespace", ns, f"{NS_LABEL}={operator.ns_label}")
    node, cidr = loopback_node
    base = cidr.rsplit(".", 1)[0]
    admin_port = free_port([f"{base}.{i}" for i in range(1, 7)])
    _apply(kube, secret(), service("web", [("https", 443)]),
           tunnel(metrics={"port": admin_port}), namespace=ns)
    _apply(kube, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop-0", "labels": {"app": "shop", **INJECT}},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}], "nodeSelector": {
            "kubernetes.io/hostname": node}, "tolerations": [{"key": TAINT, "operator": "Exists"}]},
    }, namespace=ns)
    running = kube.wait_for(lambda: (_get(kube, "pod", "shop-0", ns) or {}).get("status", {}).get("podIP"),
                            30, "kwok to run shop-0")
    assert str(running).startswith(f"{base}."), running

    # Nothing answers on the pod's admin port yet.
    t = wait_tunnel(kube, ns, "shop", "EdgesConnected Unknown", lambda t: _condition(t, "EdgesConnected").get(
        "reason") == "SidecarsUnreachable", timeout=30)
    assert f"pod shop-0: no answer from {running}:{admin_port}" in _condition(t, "EdgesConnected")["message"]

    procs = Procs(tmp_path)
    try:
        one, two = free_port(["127.0.0.1"]), free_port(["127.0.0.1"])
        procs.edge("a", one)
        procs.start("sidecar", "shop-0", {
            "edge": {"urls": [f"ws://127.0.0.1:{one}/t", f"ws://127.0.0.1:{two}/t"], "connectionsPerUrl": 1,
                     "tokenFile": str(tmp_path / "token")},
            "routes": [{"name": "echo", "match": {"services": ["tcp"]},
                        "backend": {"host": "127.0.0.1", "port": 9}}],
            "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.3, "fastWindowSeconds": 2},
            "http": {"listen": f"{running}:{admin_port}"},
            "logging": {"format": "text", "level": "warning"}, "drainSeconds": 0})
        # (It may first say "0 of 2", while the tunnel to the first edge is still being dialled.)
        t = wait_tunnel(kube, ns, "shop", "EdgesConnected False, 1 of 2", lambda t: _condition(
            t, "EdgesConnected").get("message") == "1 of 2 edges on pod shop-0", timeout=30)
        cond = _condition(t, "EdgesConnected")
        assert (cond["reason"], cond["message"]) == ("EdgesMissing", "1 of 2 edges on pod shop-0"), cond
        status = t["status"]
        assert (status["sidecarsReporting"], status["sidecarsMissingEdges"], status["edgesExpected"],
                status["edgesConnected"]) == (1, 1, 2, 1)

        procs.edge("b", two)
        t = wait_tunnel(kube, ns, "shop", "EdgesConnected True", lambda t: _condition(
            t, "EdgesConnected").get("status") == "True", timeout=30)
        cond = _condition(t, "EdgesConnected")
        assert (cond["reason"], cond["message"]) == (
            "AllEdgesConnected", "1 sidecar(s) hold tunnels to all their edges (2 each)"), cond
        status = t["status"]
        assert (status["sidecarsReporting"], status["sidecarsMissingEdges"], status["edgesExpected"],
                status["edgesConnected"]) == (1, 0, 2, 2)
        # The printer column shows it.
        header, row = kube.kubectl("get", "tunnel", "shop", "-n", ns).stdout.splitlines()[:2]
        assert row.split()[header.split().index("EDGES")] == "True", (header, row)
    finally:
        procs.stop()
