"""A real node joined to the test control plane (tests/k8s/node/node.py): the kubelet built from the
same Kubernetes module, Debian's containerd and runc, the image from scripts/build-image. Pods from
that image run there as the chart runs them (uid 65532, read-only root filesystem, no capabilities,
ConfigMap and Secret volumes, probes) and carry bytes: a client in the node's network namespace
reaches a backend pod through an edge pod and a sidecar pod."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import need
from tests.container.conftest import build_image
from tests.k8s.node.node import BUILD_SH, KUBELET, TAINT_KEY, RealNode

from mproxy.edge.auth import mint

pytestmark = [pytest.mark.k8s, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(600)]

SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}
SECRET = "a-test-secret-of-thirty-two-bytes!"


@pytest.fixture(scope="session")
def real_node(kube: Any) -> Iterator[RealNode]:
    need(os.geteuid() == 0, "the real node needs root (namespaces, mounts, cgroups)")
    for tool in ("unshare", "nsenter", "ip", "containerd", "ctr", "runc", "curl"):
        need(shutil.which(tool), f"{tool} is not installed (apt-get install containerd runc iproute2 curl)")
    need(Path("/usr/lib/cni/bridge").exists(), "the CNI plugins are not installed "
         "(apt-get install containernetworking-plugins)")
    built = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=1800, check=False)
    if built.returncode != 0 or not KUBELET.exists():
        pytest.fail(f"tests/k8s/node/build.sh failed:\n{built.stdout[-2000:]}\n{built.stderr[-4000:]}",
                    pytrace=False)
    image = build_image()
    work = Path(tempfile.mkdtemp(prefix="mpnode-"))  # short: containerd's socket path must fit 108 bytes
    started = time.monotonic()
    node = RealNode(name="real-node-0", work=work, image=image.ref)
    try:
        node.start(kube.kubeconfig, [image.archive, image.pause_archive], image.pause_ref)
        kube.wait_node_ready(node.name, timeout=120)
        print(f"real node {node.name} Ready {time.monotonic() - started:.1f} s after its start")
        yield node
    except BaseException:
        print(node.all_logs())
        raise
    finally:
        kube.kubectl("delete", "node", node.name, "--wait=false", check=False)
        node.stop()
        if os.environ.get("MPROXY_K8S_KEEP_LOGS") != "1":
            shutil.rmtree(work, ignore_errors=True)


def on_real_node(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, "nodeSelector": {"type": "real"},
            "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]}


def mproxy_pod(name: str, image: str, args: list[str], config_map: str, config_dir: str,
               secret: str | None = None, secret_dir: str | None = None) -> dict[str, Any]:
    """A pod running `mproxy ARGS` as the chart runs its containers."""
    mounts = [{"name": "config", "mountPath": config_dir, "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map}},
                                     {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
    if secret:
        mounts.append({"name": "secret", "mountPath": secret_dir, "readOnly": True})
        volumes.append({"name": "secret", "secret": {"secretName": secret}})
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": on_real_node({
            "securityContext": POD_SECURITY,
            "automountServiceAccountToken": False,
            "containers": [{
                "name": name, "image": image, "imagePullPolicy": "Never", "args": args,
                "securityContext": SECURITY, "volumeMounts": mounts,
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9090},
                                   "periodSeconds": 1, "failureThreshold": 3},
            }],
            "volumes": volumes,
        }),
    }


def apply(kube: Any, namespace: str, *docs: dict[str, Any]) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def ready_pod_ip(kube: Any, namespace: str, name: str, node: RealNode, timeout: float = 90) -> str:
    def ready() -> str | None:
        pod = kube.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout
        status = yaml.safe_load(pod)["status"]
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status.get("podIP") if conditions.get("Ready") == "True" else None

    try:
        return kube.wait_for(ready, timeout=timeout, what=f"pod {name} Ready")  # type: ignore[no-any-return]
    except TimeoutError:
        described = kube.kubectl("describe", "pod", "-n", namespace, name, check=False).stdout
        logs = kube.kubectl("logs", "-n", namespace, name, check=False)
        raise AssertionError(f"{described[-3000:]}\n{logs.stdout[-2000:]}{logs.stderr[-500:]}\n"
                             f"{node.log_tail('kubelet.log', 4000)}") from None


def test_image_pods_carry_traffic_on_the_real_node(kube: Any, kube_namespace: str,
                                                  real_node: RealNode) -> None:
    ns, image = kube_namespace, real_node.image
    started = time.monotonic()
    # The backend: a plain HTTP server from the same image, serving its (empty) /tmp.
    backend = on_real_node({
        "securityContext": POD_SECURITY, "automountServiceAccountToken": False,
        "containers": [{"name": "web", "image": image, "imagePullPolicy": "Never",
                        "command": ["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                        "securityContext": SECURITY,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    })
    edge_config = {"auth": {"secretFile": "/var/run/mproxy/edge/secret"},
                   "listeners": [{"kind": "http", "listen": "0.0.0.0:8080"}],
                   "tunnel": {"listen": "0.0.0.0:8443"}, "http": {"listen": "0.0.0.0:9090"},
                   "logging": {"format": "text"}, "drainSeconds": 1}
    apply(kube, ns,
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": backend},
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge"},
           "stringData": {"secret": SECRET}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edge"},
           "data": {"edge.yaml": yaml.safe_dump(edge_config)}},
          mproxy_pod("edge", image, ["edge", "--config", "/etc/mproxy/edge.yaml"], "edge", "/etc/mproxy",
                     "edge", "/var/run/mproxy/edge"))
    web_ip = ready_pod_ip(kube, ns, "web", real_node)
    edge_ip = ready_pod_ip(kube, ns, "edge", real_node)

    token = mint(SECRET.encode(), domains=["shop.test"], ports=[], ttl=3600, subject=None)
    sidecar_config = {"edge": {"urls": [f"ws://{edge_ip}:8443/"],
                               "tokenFile": "/var/run/mproxy/token/token"},
                      "routes": [{"name": "web", "match": {"services": ["http"]},
                                  "backend": {"host": web_ip, "port": 8080}}],
                      "http": {"listen": "0.0.0.0:9090"}, "logging": {"format": "text"},
                      "drainSeconds": 1}
    apply(kube, ns,
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"},
           "stringData": {"token": token}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sidecar"},
           "data": {"config.yaml": yaml.safe_dump(sidecar_config)}},
          mproxy_pod("sidecar", image, ["sidecar", "--config", "/etc/mproxy/config.yaml"], "sidecar",
                     "/etc/mproxy", "token", "/var/run/mproxy/token"))
    ready_pod_ip(kube, ns, "sidecar", real_node)  # /readyz: config loaded and the tunnel connected

    got = real_node.in_netns("curl", "--silent", "--show-error", "--max-time", "10",
                             "-H", "Host: shop.test", f"http://{edge_ip}:8080/")
    assert got.returncode == 0 and b"Directory listing for /" in got.stdout, got
    print(f"pods created to first byte through the tunnel on the real node: "
          f"{time.monotonic() - started:.1f} s")
    refused = real_node.in_netns("curl", "--silent", "-o", "/dev/null", "-w", "%{http_code}",
                                 "-H", "Host: other.test", f"http://{edge_ip}:8080/")
    assert refused.stdout == b"502", refused

