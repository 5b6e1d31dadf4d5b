"""A real node joined to the test control plane (tests/k8s/node/node.py): the kubelet built from the
same Kubernetes module, Debian's containerd and runc, the image from scripts/build-image. Pods from
that image run there as the chart runs them (uid 65532, read-only root filesystem, no capabilities,
ConfigMap and Secret volumes, probes) and carry bytes: a client in the node's network namespace
reaches a backend pod through an edge pod and a sidecar pod."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
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
CHART = Path(__file__).resolve().parents[2] / "charts" / "mproxy"


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



def test_the_chart_operator_runs_on_the_real_node(kube: Any, real_node: RealNode, tmp_path: Path) -> None:
    """`helm install` with the built image: the operator pod really starts on the real node (its args,
    mounts, uid and probes as the chart sets them), reaches the apiserver through the in-cluster
    config, fills its webhook's caBundle and reconciles a Tunnel."""
    suffix = uuid.uuid4().hex[:6]
    ns, release = f"mproxy-real-{suffix}", f"r{suffix}"
    full = f"{release}-mproxy"
    repository, tag = real_node.image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "sidecar": {"pullPolicy": "Never"},
        "operator": {"replicas": 1, "logFormat": "text", "nodeSelector": {"type": "real"},
                     "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    kube.run_helm("install", release, str(CHART), "--namespace", ns, "--create-namespace",
                  "-f", str(values_file), "--wait=false", timeout=120)
    try:
        def operator_pod() -> dict[str, Any] | None:
            pods = json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
            for pod in pods:
                conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
                if conditions.get("Ready") == "True":
                    return pod  # type: ignore[no-any-return]
            return None

        try:
            pod = kube.wait_for(operator_pod, timeout=120, what="the operator pod Ready")
        except TimeoutError:
            described = kube.kubectl("describe", "pods", "-n", ns, check=False).stdout
            raise AssertionError(f"{described[-4000:]}\n{real_node.log_tail('kubelet.log', 3000)}") from None
        print(f"helm install to the operator pod Ready on the real node: {time.monotonic() - started:.1f} s")
        assert pod["spec"]["nodeName"] == real_node.name
        container = pod["status"]["containerStatuses"][0]
        assert container["image"].endswith(real_node.image), container
        if container["restartCount"]:
            # Seen here: the chart creates the MutatingWebhookConfiguration after the Deployment
            # (Helm's install order) and the operator exits when it starts first (a race; reported).
            print(f"the operator restarted {container['restartCount']}x: {container.get('lastState')}\n"
                  f"{real_node.pod_logs(ns, pod['metadata']['name'])[-2000:]}")

        # The operator made its certificate and wrote the CA into its own webhook configuration.
        def ca_bundle() -> str:
            hook = json.loads(kube.kubectl("get", "mutatingwebhookconfiguration", full, "-o", "json").stdout)
            return str(hook["webhooks"][0]["clientConfig"].get("caBundle", ""))

        assert kube.wait_for(ca_bundle, timeout=30, what="the webhook caBundle").startswith("LS0t")

        # It reconciles: a Tunnel whose route names a real Service gets its ConfigMap and status.
        apply(kube, ns,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}},
              {"apiVersion": "mproxy.dev/v1alpha1", "kind": "Tunnel", "metadata": {"name": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "edge": {"urls": ["ws://edge.example.test/"], "tokenSecretRef": {"name": "token"}},
                        "routes": [{"name": "web", "match": {"services": ["http"]},
                                    "backend": {"service": "web", "port": "http"}}]}})

        def resolved() -> dict[str, Any] | None:
            tunnel = json.loads(kube.kubectl("get", "tunnel", "shop", "-n", ns, "-o", "json").stdout)
            conditions = {c["type"]: c for c in (tunnel.get("status") or {}).get("conditions", [])}
            ok = conditions.get("RoutesResolved", {}).get("status") == "True"
            return tunnel if ok and tunnel["status"].get("configMap") else None

        tunnel = kube.wait_for(resolved, timeout=60, what="the Tunnel reconciled by the operator pod")
        config = json.loads(kube.kubectl("get", "configmap", tunnel["status"]["configMap"], "-n", ns,
                                         "-o", "json").stdout)
        rendered = yaml.safe_load(config["data"]["config.yaml"])
        backend = rendered["routes"][0]["backend"]
        assert (backend["host"], backend["port"]) == (f"web.{ns}.svc.cluster.local", 8080), backend
        # Deleted while the operator still runs, so it removes its finalizer (docs/operator.md).
        kube.kubectl("delete", "tunnel", "shop", "-n", ns, "--timeout=60s")
    finally:
        kube.run_helm("uninstall", release, "--namespace", ns, "--wait", "--timeout=60s", check=False,
                      timeout=90)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
