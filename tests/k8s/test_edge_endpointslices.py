"""The edge's announced replica count read from EndpointSlices on the real apiserver (issue 12).

A real `mproxy edge` process on loopback, with the chart's own edge ServiceAccount, Role and RoleBinding
(rendered with edge.replicasFromEndpointSlices and applied, so the chart's RBAC is proved enough) and a
token of that ServiceAccount; the API server comes from KUBERNETES_SERVICE_HOST/PORT, as in a pod. The
test writes the EndpointSlices itself (a headless Service without a selector, so no controller touches
them) and watches the count every tunnel upgrade announces follow 2 -> 3 -> 1, through a second
(dual-stack) slice, a not-ready pod and a terminating one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from tests.ports import free_port

from mproxy.edge.auth import mint

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

CHART = Path(__file__).resolve().parents[2] / "charts" / "mproxy"
SERVICE = "edges-tunnel"


def _edge_rbac(kube: Any, namespace: str) -> str:
    """Apply the chart's edge ServiceAccount, Role and RoleBinding in `namespace`; returns the SA name."""
    out = kube.run_helm("template", "t", str(CHART), "--namespace", namespace, "--set", "edge.enabled=true",
                        "--set", "edge.secretName=s", "--set", "edge.replicasFromEndpointSlices=true").stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == "edge"]
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
    return str(docs[0]["metadata"]["name"])


def _slice(name: str, endpoints: list[tuple[str, str, dict[str, bool]]], family: str = "IPv4") -> str:
    return yaml.safe_dump({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": SERVICE}},
        "ports": [{"name": "tunnel", "port": 9443, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": cond, "targetRef": {"kind": "Pod", "name": pod}}
                      for pod, ip, cond in endpoints],
    })


READY = {"ready": True}


@contextlib.contextmanager
def _edge(kube: Any, tmp: Path, namespace: str, token: str, edge_id: str = "edges-0",
          tunnel: int = 0) -> Iterator[tuple[str, str]]:
    (tmp / "secret").write_text("endpointslice-test-secret-0123456789\n")
    (tmp / "token").write_text(token)
    tunnel, http = tunnel or free_port(), free_port()
    cfg = {
        "id": edge_id, "replicas": 5,
        "replicasFrom": {"endpointSlices": {"service": SERVICE, "namespace": namespace,
                                            "tokenFile": str(tmp / "token"), "caFile": str(kube.ca_file)}},
        "auth": {"secretFile": str(tmp / "secret")},
        "tunnel": {"listen": f"127.0.0.1:{tunnel}", "path": "/t"},
        "http": {"listen": f"127.0.0.1:{http}"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 0,
    }
    (tmp / f"{edge_id}.yaml").write_text(yaml.safe_dump(cfg))
    api = urlsplit(kube.server)
    env = {**kube.env(), "KUBERNETES_SERVICE_HOST": str(api.hostname),
           "KUBERNETES_SERVICE_PORT": str(api.port)}
    env.pop("POD_NAME", None)
    log = tmp / f"{edge_id}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mproxy", "edge", "--config",
                                 str(tmp / f"{edge_id}.yaml")], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        kube.wait_for(lambda: _get(f"http://127.0.0.1:{http}/readyz")[0] == 200, 20, "the edge to be ready")
        yield f"http://127.0.0.1:{tunnel}/t", f"http://127.0.0.1:{http}"
    finally:
        proc.terminate()
        proc.wait(10)
        print(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except OSError:
        return 0, {}, ""


def _announced(tunnel: str, http: str) -> tuple[str, str]:
    """What a tunnel upgrade is told (a 409: this sidecar 'already holds' the edge) and the gauge."""
    status, headers, _ = _get(tunnel, {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Mproxy-Have-Edges": "edges-0"})
    assert status == 409
    assert headers["X-Mproxy-Edge-Replicas-Live"] == "true"  # sidecars behind a balancer probe for it
    gauge = [line.split()[-1] for line in _get(f"{http}/metrics")[2].splitlines()
             if line.startswith("mproxy_edge_replicas_announced ")]
    return headers["X-Mproxy-Edge-Replicas"], gauge[0]


def _follows(kube: Any, tunnel: str, http: str, count: int) -> None:
    want = (str(count), f"{count}.0")
    kube.wait_for(lambda: _announced(tunnel, http) == want, 15, f"the edge to announce {count}")


def test_the_announced_count_follows_the_ready_endpoints(kube: Any, kube_namespace: str,
                                                         tmp_path: Path) -> None:
    ns = kube_namespace
    sa = _edge_rbac(kube, ns)
    who = f"system:serviceaccount:{ns}:{sa}"
    for verb, resource, expected in (("watch", "endpointslices.discovery.k8s.io", "yes"),
                                     ("list", "pods", "no"), ("get", "secrets", "no"),
                                     ("create", "endpointslices.discovery.k8s.io", "no")):
        got = kube.kubectl("auth", "can-i", verb, resource, "--as", who, "-n", ns, check=False).stdout.strip()
        assert got == expected, f"{verb} {resource}: {got}"
    assert kube.kubectl("auth", "can-i", "list", "endpointslices.discovery.k8s.io", "--as", who, "-n",
                        "default", check=False).stdout.strip() == "no", "the Role is namespaced"
    token = kube.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE},
         "spec": {"clusterIP": "None", "ports": [{"name": "tunnel", "port": 9443}]}}))
    kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
        "edges-v4", [("edges-0", "10.244.0.10", READY), ("edges-1", "10.244.0.11", READY)]))

    with _edge(kube, tmp_path, ns, token) as (tunnel, http):
        started = time.monotonic()
        _follows(kube, tunnel, http, 2)  # not the static 5
        # 2 -> 3: a third pod, listed in the IPv4 slice and again in an IPv6 one (one pod, counted once).
        kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
            "edges-v4", [("edges-0", "10.244.0.10", READY), ("edges-1", "10.244.0.11", READY),
                         ("edges-2", "10.244.0.12", READY)]))
        kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
            "edges-v6", [("edges-1", "fd00::11", READY), ("edges-2", "fd00::12", READY)], family="IPv6"))
        _follows(kube, tunnel, http, 3)
        # 3 -> 1: edges-1 fails its probe, edges-2 terminates and its IPv6 slice goes; this edge's own
        # endpoint shows not ready (its probe has not passed) but it is serving, so it counts.
        kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
            "edges-v4", [("edges-0", "10.244.0.10", {"ready": False}), ("edges-1", "10.244.0.11",
                                                                        {"ready": False}),
                         ("edges-2", "10.244.0.12", {"ready": False, "terminating": True})]))
        kube.kubectl("delete", "endpointslice", "edges-v6", "-n", ns)
        _follows(kube, tunnel, http, 1)
        print(f"2 -> 3 -> 1 followed in {time.monotonic() - started:.1f} s")
        metrics = _get(f"{http}/metrics")[2]
        assert "mproxy_edge_replicas_source_up 1.0" in metrics
        assert "mproxy_edge_replicas_source_errors_total 0.0" in metrics


def test_without_the_role_the_static_count_stays_and_the_log_says_why(kube: Any, kube_namespace: str,
                                                                      tmp_path: Path) -> None:
    with _edge(kube, tmp_path, kube_namespace, kube.user_token) as (tunnel, http):
        metrics = f"{http}/metrics"
        kube.wait_for(lambda: "mproxy_edge_replicas_source_errors_total 0.0" not in _get(metrics)[2], 15,
                      "a refused list")
        assert _announced(tunnel, http) == ("5", "5.0")
        assert "mproxy_edge_replicas_source_up 0.0" in _get(f"{http}/metrics")[2]
        log = (tmp_path / "edges-0.log").read_text()
        assert "HTTP 403: the edge's service account may not list endpointslices" in log, log
        assert kube.user_token not in log


class Balancer:
    """One address in front of the edges (as a cloud LoadBalancer is), round robin over `backends`, which
    the test changes to scale; threads and blocking sockets, as the rest of this module."""

    def __init__(self) -> None:
        self.backends: list[int] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.turn = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            backends = list(self.backends)
            self.turn += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", backends[self.turn % len(backends)]), 2)
            except (OSError, ZeroDivisionError):
                client.close()
                continue
            upstream.settimeout(None)  # tunnels idle between heartbeats: no read timeout
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_a_sidecar_behind_a_balancer_follows_an_autoscaled_edge(kube: Any, kube_namespace: str,
                                                                 tmp_path: Path) -> None:
    """The HPA story behind one load-balanced address: the edges announce the live count, and the
    sidecar, which holds all it expects and so would never dial again, probes (one more dial every
    probeSeconds, answered 409 with the count by an edge it holds): 2 -> 3 edges and back to 2."""
    ns = kube_namespace
    sa = _edge_rbac(kube, ns)
    token = kube.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    two = [("edges-0", "10.244.0.10", READY), ("edges-1", "10.244.0.11", READY)]
    kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice("edges-v4", two))
    lb = Balancer()
    ports = [free_port() for _ in range(3)]
    (tmp_path / "tunnel-token").write_text(mint(b"endpointslice-test-secret-0123456789", domains=[],
                                                ports=[7022]))
    sidecar_http = free_port()
    sidecar_cfg = {
        "edge": {"urls": [f"ws://127.0.0.1:{lb.port}/t"], "tokenFile": str(tmp_path / "tunnel-token"),
                 "probeSeconds": 0.3},
        "routes": [{"name": "echo", "match": {"services": ["tcp"]},
                    "backend": {"host": "127.0.0.1", "port": 9}}],
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.3, "fastWindowSeconds": 2},
        "http": {"listen": f"127.0.0.1:{sidecar_http}"},
        "logging": {"format": "text", "level": "info"}, "drainSeconds": 0,
    }
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump(sidecar_cfg))

    def holds(count: int) -> bool:
        status, _, body = _get(f"http://127.0.0.1:{sidecar_http}/status")
        if status != 200:
            return False
        state = json.loads(body)
        pool = state["edges"][0]
        live = [t for t in state["tunnels"] if t["state"] != "stopped"]
        return bool((pool["expectedEdges"], pool["connectedEdges"], len(live)) == (count, count, count))

    with contextlib.ExitStack() as stack:
        stack.callback(lb.close)
        for i in range(2):
            stack.enter_context(_edge(kube, tmp_path, ns, token, f"edges-{i}", ports[i]))
        lb.backends = ports[:2]
        log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115 (closed by the stack)
        stack.callback(log.close)
        sidecar = subprocess.Popen([sys.executable, "-m", "mproxy", "sidecar", "--config",
                                    str(tmp_path / "sidecar.yaml"), "--no-reload"], stdout=log,
                                   stderr=subprocess.STDOUT)
        stack.callback(lambda: print((tmp_path / "sidecar.log").read_text(errors="replace")[-3000:]))
        stack.callback(sidecar.wait, 10)
        stack.callback(sidecar.terminate)
        kube.wait_for(lambda: holds(2), 20, "the sidecar on 2 of 2 edges")

        # Scale up: a third edge pod becomes ready and the balancer sends to it.
        third = contextlib.ExitStack()
        stack.enter_context(third)
        third.enter_context(_edge(kube, tmp_path, ns, token, "edges-2", ports[2]))
        kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
            "edges-v4", [*two, ("edges-2", "10.244.0.12", READY)]))
        lb.backends = ports
        kube.wait_for(lambda: holds(3), 20, "the sidecar to find the third edge")

        # Scale down: it terminates, leaves the slice and the balancer; the survivors announce 2.
        kube.kubectl("apply", "-n", ns, "-f", "-", input=_slice(
            "edges-v4", [*two, ("edges-2", "10.244.0.12", {"ready": False, "terminating": True})]))
        lb.backends = ports[:2]
        third.close()
        kube.wait_for(lambda: holds(2), 20, "the sidecar back on 2 of 2 edges")
