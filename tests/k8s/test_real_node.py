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
    assert refused.stdout == b"404", refused




def wait_ready_pod(kube: Any, ns: str, selector: str, node: RealNode, what: str, timeout: float = 120,
                   accept: Any = lambda pod: True) -> dict[str, Any]:
    """The first Ready pod matching `selector` (and `accept`); on timeout, what the kubelet said."""
    def ready() -> dict[str, Any] | None:
        pods = json.loads(kube.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)["items"]
        for pod in pods:
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp") \
                    and accept(pod):
                return pod  # type: ignore[no-any-return]
        return None

    try:
        return kube.wait_for(ready, timeout=timeout, what=what)  # type: ignore[no-any-return]
    except TimeoutError:
        described = kube.kubectl("describe", "pods", "-n", ns, "-l", selector, check=False).stdout
        raise AssertionError(f"{what}: not within {timeout} s\n{described[-4000:]}\n"
                             f"{node.log_tail('kubelet.log', 3000)}") from None


def has_sidecar(pod: dict[str, Any]) -> bool:
    return any(c["name"] == "mproxy-sidecar" for c in pod["spec"].get("initContainers", []))


def test_helm_install_to_curl_through_an_injected_sidecar(kube: Any, real_node: RealNode,
                                                          tmp_path: Path) -> None:
    """As a user would: `helm install` the chart with the built image; the operator pod starts on
    the real node and becomes Ready; a Tunnel and a labelled backend Deployment are applied; the
    webhook injects the sidecar (a native sidecar); it dials an edge pod; curl through the edge reaches
    the backend. Then a rollout keeps traffic flowing and deleting the Tunnel rolls the pods without
    the sidecar (docs/operator.md).

    Two stand-ins for what a cluster's network provides and this one lacks (no kube-proxy, no cluster
    DNS, the apiserver outside the node's network): the webhook Service is re-created as ExternalName
    `localhost`, whose port 443 forward.py carries to the operator pod, and the backend pod maps its
    Service name to 127.0.0.1 (hostAliases), where the sidecar's route reaches it in the same pod."""
    suffix = uuid.uuid4().hex[:6]
    ns, app, release = f"mproxy-real-{suffix}", f"shop-{suffix}", f"r{suffix}"
    full = f"{release}-mproxy"
    repository, tag = real_node.image.rsplit(":", 1)
    tolerations = [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "sidecar": {"pullPolicy": "Never"},
        "operator": {"replicas": 1, "logFormat": "text", "nodeSelector": {"type": "real"},
                     "tolerations": tolerations},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    kube.run_helm("install", release, str(CHART), "--namespace", ns, "--create-namespace",
                  "-f", str(values_file), "--wait=false", timeout=120)
    try:
        operator = wait_ready_pod(kube, ns, "app.kubernetes.io/component=operator", real_node,
                                  "the operator pod Ready")
        operator_ready = time.monotonic() - started
        assert operator["spec"]["nodeName"] == real_node.name
        status = operator["status"]["containerStatuses"][0]
        assert status["image"].endswith(real_node.image), status
        if status["restartCount"]:
            # Seen here: the chart creates the MutatingWebhookConfiguration after the Deployment
            # (Helm's install order) and the operator exits when it starts first (a race; reported).
            print(f"the operator restarted {status['restartCount']}x: {status.get('lastState')}\n"
                  f"{real_node.pod_logs(ns, operator['metadata']['name'])[-1500:]}")

        def ca_bundle() -> str:
            hook = json.loads(kube.kubectl("get", "mutatingwebhookconfiguration", full, "-o", "json").stdout)
            return str(hook["webhooks"][0]["clientConfig"].get("caBundle", ""))

        assert kube.wait_for(ca_bundle, timeout=30, what="the caBundle from the operator").startswith("LS0t")

        # The apiserver's way to the webhook (see the docstring).
        real_node.forward(f"host:127.0.0.1:443=ns:{operator['status']['podIP']}:9443")
        kube.kubectl("delete", "service", "-n", ns, f"{full}-webhook")
        kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{full}-webhook"},
            "spec": {"type": "ExternalName", "externalName": "localhost"}}))

        kube.kubectl("create", "namespace", app)
        edge_config = {"auth": {"secretFile": "/var/run/mproxy/edge/secret"},
                       "listeners": [{"kind": "http", "listen": "0.0.0.0:8080"}],
                       "tunnel": {"listen": "0.0.0.0:8443"}, "http": {"listen": "0.0.0.0:9090"},
                       "logging": {"format": "text"}, "drainSeconds": 1}
        apply(kube, app,
              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge"},
               "stringData": {"secret": SECRET}},
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edge"},
               "data": {"edge.yaml": yaml.safe_dump(edge_config)}},
              mproxy_pod("edge", real_node.image, ["edge", "--config", "/etc/mproxy/edge.yaml"], "edge",
                         "/etc/mproxy", "edge", "/var/run/mproxy/edge"))
        edge_ip = ready_pod_ip(kube, app, "edge", real_node)

        token = mint(SECRET.encode(), domains=["shop.test"], ttl=3600)
        apply(kube, app,
              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"},
               "stringData": {"token": token}},
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}},
              {"apiVersion": "mproxy.dev/v1alpha1", "kind": "Tunnel", "metadata": {"name": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "edge": {"urls": [f"ws://{edge_ip}:8443/"], "tokenSecretRef": {"name": "token"}},
                        "routes": [{"name": "web", "match": {"services": ["http"]},
                                    "backend": {"service": "web", "port": "http"}}],
                        "drainSeconds": 1}})

        def reconciled() -> bool:
            tunnel = json.loads(kube.kubectl("get", "tunnel", "shop", "-n", app, "-o", "json").stdout)
            conditions = {c["type"]: c["status"] for c in (tunnel.get("status") or {}).get("conditions", [])}
            return conditions.get("RoutesResolved") == "True" and "configHash" in tunnel["status"]

        kube.wait_for(reconciled, timeout=60, what="the Tunnel reconciled by the operator pod")
        apply(kube, app, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {
                         "metadata": {"labels": {"app": "web", "mproxy.dev/inject": "enabled"}},
                         "spec": on_real_node({
                             "securityContext": POD_SECURITY,
                             "hostAliases": [{"ip": "127.0.0.1",
                                              "hostnames": [f"web.{app}.svc.cluster.local"]}],
                             "containers": [{
                                 "name": "web", "image": real_node.image, "imagePullPolicy": "Never",
                                 "command": ["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                                 "securityContext": SECURITY,
                                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                                 "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
                             "volumes": [{"name": "tmp", "emptyDir": {}}]})}}})
        pod = wait_ready_pod(kube, app, "app=web", real_node, "the backend pod Ready with its sidecar")
        sidecar = [c for c in pod["spec"]["initContainers"] if c["name"] == "mproxy-sidecar"]
        assert sidecar and sidecar[0].get("restartPolicy") == "Always", pod["spec"]  # a native sidecar

        def through_edge(host: str = "shop.test") -> subprocess.CompletedProcess[bytes]:
            return real_node.in_netns("curl", "--silent", "--show-error", "--max-time", "10",
                                      "-w", "\n%{http_code}", "-H", f"Host: {host}", f"http://{edge_ip}:8080/")

        got = through_edge()
        assert got.returncode == 0 and got.stdout.endswith(b"\n200"), (got, real_node.pod_logs(app, "web"))
        assert b"Directory listing for /" in got.stdout
        print(f"helm install to the operator Ready: {operator_ready:.1f} s; "
              f"to the first byte through the injected sidecar: {time.monotonic() - started:.1f} s")

        # A rollout: the new pod gets the sidecar too, and traffic flows through it.
        kube.kubectl("rollout", "restart", "deployment/web", "-n", app)
        kube.kubectl("rollout", "status", "deployment/web", "-n", app, "--timeout=120s", timeout=150)
        rolled = wait_ready_pod(kube, app, "app=web", real_node, "the rolled pod Ready",
                                accept=lambda p: p["metadata"]["name"] != pod["metadata"]["name"])
        assert has_sidecar(rolled)
        kube.wait_for(lambda: through_edge().stdout.endswith(b"\n200"), timeout=30,
                      what="traffic through the rolled pod")

        # Deleting the Tunnel rolls the workload; its new pod has no sidecar, so the edge has no tunnel.
        kube.kubectl("delete", "tunnel", "shop", "-n", app, "--timeout=60s")
        wait_ready_pod(kube, app, "app=web", real_node, "a pod without the sidecar",
                       accept=lambda p: not has_sidecar(p))
        kube.wait_for(lambda: through_edge().stdout.endswith(b"\n404"), timeout=60,
                      what="the edge answering 404 once no sidecar serves shop.test")
    finally:
        kube.kubectl("delete", "tunnel", "--all", "-n", app, "--timeout=30s", check=False)
        kube.run_helm("uninstall", release, "--namespace", ns, "--wait", "--timeout=60s", check=False,
                      timeout=90)
        for namespace in (app, ns):
            kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
