"""The operator end to end against the real control plane (apiserver, controllers, scheduler, kwok).

One `mproxy operator` subprocess serves the module. It runs as the chart's own ServiceAccount with the
chart's RBAC (so these tests also prove that RBAC is enough), with kopf peering through the chart's
ClusterKopfPeering, and its webhook on 127.0.0.1: the test registers a MutatingWebhookConfiguration
with that URL and no CA; the operator fills the caBundle in at start, as it does for the chart's.
Only pods in namespaces labelled for this module and labelled mproxy.dev/inject=enabled reach it, so
the other k8s tests sharing the control plane never see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.ports import free_port

from mproxy.config.sidecar import load_sidecar_config

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mproxy"
NS_LABEL = "mproxy-test"
RELEASE = "optest"
FULLNAME = f"{RELEASE}-mproxy"
SA = f"{FULLNAME}-operator"
INJECT = {"mproxy.dev/inject": "enabled"}


@dataclass
class Operator:
    kube: Any
    proc: subprocess.Popen[bytes]
    log: Path
    http: str
    namespace: str
    ns_label: str
    cmd: list[str]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the operator exited ({self.proc.returncode}):\n{self.tail()}"

    def ready(self) -> bool:
        """Its /readyz answers 200 (it asserts first that the process still runs)."""
        self.alive()
        with urllib.request.urlopen(f"{self.http}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)


def spawn_operator(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Run `cmd`, its output appended to `log`, in a session of its own (stop_operator signals the group)
    and without the test's KUBECONFIG: it acts as the ServiceAccount of its own --kubeconfig."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})


def _apply(kube: Any, *docs: dict[str, Any], namespace: str | None = None) -> None:
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    kube.kubectl(*args, input=yaml.safe_dump_all(docs))


def _get(kube: Any, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    res = kube.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _list(kube: Any, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
    items: list[dict[str, Any]] = json.loads(kube.kubectl(*args).stdout)["items"]
    return items


def _condition(tunnel: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((tunnel or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_established(kube: Any, *crds: str) -> None:
    """`kubectl wait --for=condition=Established` fails at once while a new CRD has no conditions yet."""
    path = '{.status.conditions[?(@.type=="Established")].status}'
    for crd in crds:
        kube.wait_for(
            lambda crd=crd: (
                kube.kubectl("get", "crd", crd, "-o", f"jsonpath={path}", check=False).stdout == "True"
            ),
            timeout=30,
            what=f"CRD {crd} to be established",
        )


def _sa_kubeconfig(kube: Any, namespace: str, path: Path) -> None:
    token = kube.kubectl("create", "token", SA, "-n", namespace, "--duration=2h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _helm_template(
    kube: Any, namespace: str, *show: str, values: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace, *(f"--set={v}" for v in values)]
    for s in show:
        args += ["--show-only", s]
    return [d for d in yaml.safe_load_all(kube.run_helm(*args).stdout) if d]


def start_operator(kube: Any, work: Path, *extra: str, values: tuple[str, ...] = ()) -> Operator:
    """Install the chart's RBAC and a URL webhook configuration, start `mproxy operator` as the chart's
    ServiceAccount and wait for /readyz. `extra` goes to the command line (e.g. --status-interval);
    `values` (KEY=VALUE) to the chart that renders the RBAC."""
    kube.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
    wait_established(kube, "tunnels.mproxy.dev", "clusterkopfpeerings.kopf.dev")
    op_ns = f"mproxy-op-{uuid.uuid4().hex[:6]}"
    label = f"l{uuid.uuid4().hex[:8]}"  # never number-like: YAML would read 1e234567 as a float
    kube.kubectl("create", "namespace", op_ns)
    # The chart's ServiceAccount, RBAC and peering object: the operator gets exactly the chart's rights.
    docs = _helm_template(
        kube, op_ns, "templates/operator-serviceaccount.yaml", "templates/operator-rbac.yaml",
        "templates/operator-peering.yaml", values=values,
    )
    _apply(kube, *docs, namespace=op_ns)
    webhook_port, http_port = free_port(), free_port()
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": FULLNAME},  # the one name the chart's RBAC lets the operator update
        "webhooks": [
            {
                "name": "inject.mproxy.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/inject-sidecar"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "namespaceSelector": {"matchLabels": {NS_LABEL: label}},
                "objectSelector": {"matchLabels": INJECT},
            }
        ],
    }
    _apply(kube, webhook)
    kubeconfig = work / "operator.kubeconfig"
    _sa_kubeconfig(kube, op_ns, kubeconfig)
    mproxy = shutil.which("mproxy") or str(Path(sys.executable).parent / "mproxy")
    log = work / "operator.log"
    cmd = [
        mproxy,
        "operator",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        op_ns,
        "--webhook-listen",
        f"127.0.0.1:{webhook_port}",
        "--webhook-host",
        "127.0.0.1",
        "--webhook-config",
        FULLNAME,
        "--webhook-cert-secret",
        f"{FULLNAME}-webhook-tls",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--status-interval",
        "1",
        "--peering",
        FULLNAME,
        "--priority",
        "100",
        "--sidecar-image",
        "registry.test/mproxy:1",
        "--log-format",
        "text",
        *extra,
    ]
    op = Operator(kube, spawn_operator(cmd, log), log, f"http://127.0.0.1:{http_port}", op_ns, label, cmd)
    try:
        kube.wait_for(op.ready, timeout=60, what="the operator's /readyz")
    except (TimeoutError, AssertionError) as exc:
        stop_operator(op)
        raise AssertionError(f"{exc}\n--- operator log ---\n{op.tail()}") from None
    return op


def stop_operator(op: Operator) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(op.proc.pid, signal.SIGTERM)
    try:
        op.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(op.proc.pid, signal.SIGKILL)
        op.proc.wait(timeout=5)
    op.kube.kubectl("delete", "mutatingwebhookconfiguration", FULLNAME, "--ignore-not-found", check=False)
    for kind, name in (("clusterrolebinding", SA), ("clusterrole", SA), ("clusterkopfpeering", FULLNAME)):
        op.kube.kubectl("delete", kind, name, "--ignore-not-found", check=False)
    (op.log.parent / "operator.kubeconfig").unlink(missing_ok=True)  # it holds a token
    op.kube.kubectl("delete", "namespace", op.namespace, "--wait=false", check=False)


def operator_fixture(*extra: str, alive_at_end: bool = True) -> Any:
    """A module's `operator` fixture: the operator subprocess (start_operator with `extra` flags), its
    RBAC and its webhook configuration, stopped at the module's end; with `alive_at_end`, a module whose
    operator died meanwhile fails."""

    @pytest.fixture(scope="module")
    def operator(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
        op = start_operator(kube, tmp_path_factory.mktemp("operator"), *extra)
        try:
            yield op
            if alive_at_end:
                op.alive()
        finally:
            stop_operator(op)

    return operator


def ns_fixture() -> Any:
    """A module's `ns` fixture: a fresh namespace whose pods the module's operator's webhook sees."""

    @pytest.fixture
    def ns(kube: Any, operator: Operator, kube_namespace: str) -> str:
        kube.kubectl("label", "namespace", kube_namespace, f"{NS_LABEL}={operator.ns_label}")
        return kube_namespace

    return ns


operator = operator_fixture()  # see the module docstring
ns = ns_fixture()


# ---------------------------------------------------------------------------------------------
# objects


def service(name: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports],
        },
    }


def secret(name: str = "edge-token") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"token": "x.y.z"},
    }


def tunnel(name: str = "shop", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "shop"}},
        "edge": {"urls": ["wss://edge.example.test/mproxy"], "tokenSecretRef": {"name": "edge-token"}},
        "routes": [
            {
                "name": "web",
                "match": {"services": ["https"], "hostnames": ["*.shop.example.test"]},
                "backend": {"service": "web", "port": "https"},
            }
        ],
    }
    body.update(spec)
    return {"apiVersion": "mproxy.dev/v1alpha1", "kind": "Tunnel", "metadata": {"name": name}, "spec": body}


def pod(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}], **spec},
    }


def deployment(name: str, labels: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": labels["app"]}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
            },
        },
    }


def sidecars(p: dict[str, Any]) -> list[dict[str, Any]]:
    spec = p["spec"]
    return [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "mproxy-sidecar"]


def wait_tunnel(kube: Any, ns: str, name: str, what: str, pred: Any, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        t = _get(kube, "tunnel", name, ns)
        return t if t is not None and pred(t) else None

    result: dict[str, Any] = kube.wait_for(check, timeout=timeout, what=f"Tunnel {ns}/{name}: {what}")
    return result


def events_for(kube: Any, ns: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in _list(kube, "events", ns)
        if e["involvedObject"].get("kind") == "Tunnel" and e["involvedObject"].get("name") == name
    ]


# ---------------------------------------------------------------------------------------------
# reconcile: ConfigMap, status, events


BUFFER_LIMITS = {"bufferSoftBytes": 4194304, "bufferHardBytes": 16777216, "bufferGraceSeconds": 0.5,
                 "tunnelBufferBytes": 33554432, "ipv6PrefixLength": 56}
# Sidecar limits the CRD once left out (so the apiserver pruned them): every sidecar limit is declared now.
MORE_LIMITS = {"streamBufferBytes": 131072, "tunnelSendBufferBytes": 0, "udpIdleTimeoutSeconds": 12.5}


def test_tunnel_renders_the_sidecar_config_and_status(kube: Any, operator: Operator, ns: str) -> None:
    body = tunnel(limits=BUFFER_LIMITS | MORE_LIMITS)
    _apply(kube, service("web", [("http", 80), ("https", 443)]), secret(), body, namespace=ns)
    t = wait_tunnel(
        kube, ns, "shop", "RoutesResolved", lambda t: _condition(t, "RoutesResolved").get("status") == "True"
    )
    status = t["status"]
    assert status["observedGeneration"] == t["metadata"]["generation"] == 1
    assert status["configMap"] == "mproxy-shop"
    assert _condition(t, "SidecarsInjected")["reason"] == "NoPods"
    assert _condition(t, "Ready")["status"] == "False"
    assert "mproxy.dev/finalizer" in t["metadata"]["finalizers"]

    cm = _get(kube, "configmap", "mproxy-shop", ns)
    assert cm is not None
    (owner,) = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Tunnel", "shop", t["metadata"]["uid"])
    config = load_sidecar_config(cm["data"]["config.yaml"])  # the sidecar's own schema accepts it
    (route,) = config.routes
    assert route.backend is not None
    assert (route.backend.host, route.backend.port) == (f"web.{ns}.svc.cluster.local", 443)
    assert route.match.hostnames == ("*.shop.example.test",)
    assert config.edge.token_file == "/var/run/mproxy/token/token"
    assert status["configHash"] == cm["metadata"]["annotations"]["mproxy.dev/config-hash"]
    # the sidecar's buffer limits survive the apiserver (a key the CRD does not declare is pruned)
    limits = config.limits
    assert (limits.buffer_soft_bytes, limits.buffer_hard_bytes, limits.buffer_grace_seconds,
            limits.tunnel_buffer_bytes, limits.ipv6_prefix_length) == tuple(BUFFER_LIMITS.values())
    assert (limits.stream_buffer_bytes, limits.tunnel_send_buffer_bytes,
            limits.udp_idle_timeout_seconds) == tuple(MORE_LIMITS.values())

    table = kube.kubectl("get", "tunnels", "-n", ns).stdout
    assert table.split("\n")[0].split()[:6] == ["NAME", "MODE", "READY", "REASON", "INJECTED", "READY-PODS"]
    assert "Sidecar" in table and "NoPods" in table


def test_missing_service_is_a_condition_and_an_event_until_it_appears(
    kube: Any, operator: Operator, ns: str
) -> None:
    routes = [
        {"name": "web", "backend": {"service": "web", "port": "https"}},
        {"name": "db", "backend": {"service": "db", "port": 5432}},
    ]
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(routes=routes), namespace=ns)
    t = wait_tunnel(
        kube,
        ns,
        "shop",
        "ServiceNotFound",
        lambda t: _condition(t, "RoutesResolved").get("reason") == "ServiceNotFound",
    )
    assert f"Service {ns}/db does not exist" in _condition(t, "RoutesResolved")["message"]
    assert _condition(t, "Ready")["reason"] == "RoutesUnresolved"
    cm = _get(kube, "configmap", "mproxy-shop", ns)
    assert cm is not None
    assert [r["name"] for r in yaml.safe_load(cm["data"]["config.yaml"])["routes"]] == ["web"]
    kube.wait_for(
        lambda: any(
            e["reason"] == "ServiceNotFound" and e["type"] == "Warning" for e in events_for(kube, ns, "shop")
        ),
        timeout=45,
        what="a ServiceNotFound Event",
    )

    # A Service with the wrong port is a different problem, reported as such.
    _apply(kube, service("db", [("pg", 5433)]), namespace=ns)
    wait_tunnel(
        kube,
        ns,
        "shop",
        "PortNotFound",
        lambda t: _condition(t, "RoutesResolved").get("reason") == "PortNotFound",
    )
    # The right port: the config is rendered again without touching the Tunnel.
    _apply(kube, service("db", [("pg", 5432)]), namespace=ns)
    wait_tunnel(
        kube, ns, "shop", "routes resolved", lambda t: _condition(t, "RoutesResolved").get("status") == "True"
    )

    def both_routes() -> bool:
        cm = _get(kube, "configmap", "mproxy-shop", ns)
        return cm is not None and len(yaml.safe_load(cm["data"]["config.yaml"])["routes"]) == 2

    kube.wait_for(both_routes, timeout=45, what="the db route in the ConfigMap")
    operator.alive()


def test_the_crd_rejects_bad_tunnels(kube: Any, operator: Operator, ns: str) -> None:
    no_selector = tunnel("a")
    del no_selector["spec"]["selector"]
    bad_proxy = tunnel("b")
    bad_proxy["spec"]["routes"][0]["proxyProtocol"] = "v3"
    bad_default = tunnel("c", defaultRoute="nope")
    bad_url = tunnel("d")
    bad_url["spec"]["edge"]["urls"] = ["http://edge.example.test"]
    long_name = tunnel("x" * 54)
    bad_buffers = tunnel("e", limits={"bufferHardBytes": 1048576})  # under the default soft 8 MiB
    for body, expect in (
        (no_selector, "spec.selector is required in Sidecar mode"),
        (bad_proxy, "proxyProtocol"),
        (bad_default, "spec.defaultRoute must name"),
        (bad_url, "spec.edge.urls[0]"),
        (long_name, "at most 53 characters"),
        (bad_buffers, "bufferHardBytes must be at least bufferSoftBytes"),
    ):
        res = kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body), check=False)
        assert res.returncode != 0 and expect in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------
# injection


def test_pods_of_a_deployment_get_the_sidecar_and_status_counts_them(
    kube: Any, operator: Operator, ns: str
) -> None:
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(), namespace=ns)
    wait_tunnel(kube, ns, "shop", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
    _apply(kube, deployment("shop", {"app": "shop", **INJECT}, replicas=2), namespace=ns)

    def two_pods() -> list[dict[str, Any]] | None:
        pods = _list(kube, "pods", ns, "app=shop")
        return pods if len(pods) == 2 else None

    pods = kube.wait_for(two_pods, timeout=60, what="2 pods of the Deployment")
    native = tuple(int(x) for x in kube.version.lstrip("v").split(".")[:2]) >= (1, 29)
    for p in pods:
        (sc,) = sidecars(p)
        assert p["metadata"]["labels"]["mproxy.dev/tunnel"] == "shop"
        assert p["metadata"]["annotations"]["mproxy.dev/injected"] == "shop"
        if native:
            assert sc in p["spec"]["initContainers"] and sc["restartPolicy"] == "Always"
        assert sc["image"] == "registry.test/mproxy:1"
        assert sc["securityContext"]["runAsNonRoot"] is True
        assert sc["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        # Not /readyz: an edge outage must not take the pods out of their in-cluster Services.
        assert sc["readinessProbe"]["httpGet"]["path"] == "/healthz"
        volumes = {v["name"]: v for v in p["spec"]["volumes"]}
        assert volumes["mproxy-config"]["configMap"]["name"] == "mproxy-shop"
        assert volumes["mproxy-token"]["secret"]["secretName"] == "edge-token"
        assert p["spec"]["containers"][0]["name"] == "app"

    t = wait_tunnel(
        kube, ns, "shop", "2 ready pods", lambda t: (t.get("status") or {}).get("readyPods") == 2, timeout=60
    )
    assert t["status"]["injectedPods"] == t["status"]["selectedPods"] == 2
    assert _condition(t, "SidecarsInjected")["status"] == "True"
    assert _condition(t, "Ready")["status"] == "True"


def test_pods_outside_the_selection_are_left_alone(kube: Any, operator: Operator, ns: str) -> None:
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(), namespace=ns)
    wait_tunnel(kube, ns, "shop", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
    _apply(kube, pod("no-label", {"app": "shop"}), namespace=ns)
    res = kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pod("other", {"app": "cart", **INJECT}))
    )
    assert "no Tunnel in" in res.stderr  # the admission warning reaches the user
    for name in ("no-label", "other"):
        p = _get(kube, "pod", name, ns)
        assert (
            p is not None
            and not sidecars(p)
            and "mproxy.dev/injected" not in p["metadata"].get("annotations", {})
        )


def test_injection_is_idempotent_dry_run_aware_and_refuses_clashes(
    kube: Any, operator: Operator, ns: str
) -> None:
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(), namespace=ns)
    wait_tunnel(kube, ns, "shop", "reconciled", lambda t: "configHash" in (t.get("status") or {}))

    # A pod that already carries the sidecar (e.g. re-created from an injected manifest) is left alone.
    own = pod("own", {"app": "shop", **INJECT})
    own["spec"]["containers"].append({"name": "mproxy-sidecar", "image": "mine:1"})
    _apply(kube, own, namespace=ns)
    p = _get(kube, "pod", "own", ns)
    assert p is not None and [c["image"] for c in sidecars(p)] == ["mine:1"]
    assert not p["spec"].get("initContainers")

    # Server-side dry run shows the injection and creates nothing.
    before = operator.metrics()
    res = kube.kubectl(
        "create",
        "-n",
        ns,
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=yaml.safe_dump(pod("dry", {"app": "shop", **INJECT})),
    )
    assert len(sidecars(json.loads(res.stdout))) == 1
    assert _get(kube, "pod", "dry", ns) is None
    assert (
        _metric(operator.metrics(), 'mproxy_operator_injections_total{dry_run="true",outcome="injected"}')
        == _metric(before, 'mproxy_operator_injections_total{dry_run="true",outcome="injected"}') + 1
    )

    # A name clash is refused with advice, not a broken pod.
    clash = pod("clash", {"app": "shop", **INJECT}, volumes=[{"name": "mproxy-config", "emptyDir": {}}])
    res = kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(clash), check=False)
    assert res.returncode != 0 and "volume named mproxy-config" in res.stderr, res.stderr
    assert _get(kube, "pod", "clash", ns) is None


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------------------------------------
# updates and deletion


def _template_annotations(kube: Any, ns: str, name: str) -> dict[str, str]:
    d = _get(kube, "deployment", name, ns) or {}
    return dict(((d.get("spec") or {}).get("template", {}).get("metadata") or {}).get("annotations") or {})


def test_route_changes_reload_but_sidecar_changes_roll_the_workloads(
    kube: Any, operator: Operator, ns: str
) -> None:
    _apply(kube, service("web", [("https", 443), ("http", 80)]), secret(), tunnel(), namespace=ns)
    _apply(kube, deployment("shop", {"app": "shop", **INJECT}, replicas=1), namespace=ns)
    first = wait_tunnel(
        kube, ns, "shop", "1 injected pod", lambda t: (t.get("status") or {}).get("injectedPods") == 1
    )

    # Routes only: the ConfigMap changes, the pods stay (the sidecar reloads its config file).
    body = tunnel()
    body["spec"]["routes"][0]["backend"]["port"] = "http"
    _apply(kube, body, namespace=ns)
    wait_tunnel(
        kube, ns, "shop", "generation 2 observed", lambda t: t["status"].get("observedGeneration") == 2
    )
    cm = _get(kube, "configmap", "mproxy-shop", ns)
    assert cm is not None and yaml.safe_load(cm["data"]["config.yaml"])["routes"][0]["backend"]["port"] == 80
    assert "mproxy.dev/rolled-at" not in _template_annotations(kube, ns, "shop")

    # A new image cannot be reloaded: the Deployment is rolled and its new pod carries the new image.
    rollouts = 'mproxy_operator_workload_rollouts_total'
    rolled_before = _metric(operator.metrics(), rollouts)
    body["spec"]["sidecar"] = {"image": "registry.test/mproxy:2"}
    _apply(kube, body, namespace=ns)
    kube.wait_for(
        lambda: "mproxy.dev/rolled-at" in _template_annotations(kube, ns, "shop"),
        timeout=60,
        what="the Deployment's pod template to be bumped",
    )
    assert "sidecar changed" in _template_annotations(kube, ns, "shop")["mproxy.dev/roll-reason"]
    # The rollout counter (charted on the operator dashboard) counts the rolled Deployment.
    kube.wait_for(lambda: _metric(operator.metrics(), rollouts) >= rolled_before + 1, timeout=10,
                  what="mproxy_operator_workload_rollouts_total to count the rolled Deployment")

    def new_image() -> bool:
        pods = [p for p in _list(kube, "pods", ns, "app=shop") if not p["metadata"].get("deletionTimestamp")]
        return bool(pods) and all(
            [c["image"] for c in sidecars(p)] == ["registry.test/mproxy:2"] for p in pods
        )

    kube.wait_for(new_image, timeout=60, what="pods with the new sidecar image")
    t = _get(kube, "tunnel", "shop", ns)
    assert t is not None and t["status"]["sidecarHash"] != first["status"]["sidecarHash"]
    assert any(e["reason"] == "WorkloadsRolled" for e in events_for(kube, ns, "shop"))


def test_deleting_a_tunnel_rolls_its_workloads_and_collects_its_config(
    kube: Any, operator: Operator, ns: str
) -> None:
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(), namespace=ns)
    _apply(kube, deployment("shop", {"app": "shop", **INJECT}, replicas=1), namespace=ns)
    wait_tunnel(
        kube, ns, "shop", "1 injected pod", lambda t: (t.get("status") or {}).get("injectedPods") == 1
    )
    assert _get(kube, "configmap", "mproxy-shop", ns) is not None

    try:
        kube.kubectl("delete", "tunnel", "shop", "-n", ns, "--timeout=60s")  # waits for the finalizer
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        t = _get(kube, "tunnel", "shop", ns)
        raise AssertionError(
            f"{exc}\nTunnel: {json.dumps(t, indent=1)}\n--- operator ---\n{operator.tail(150)}"
        ) from None
    kube.wait_for(
        lambda: _get(kube, "configmap", "mproxy-shop", ns) is None,
        timeout=60,
        what="the garbage collector to delete the Tunnel's ConfigMap",
    )
    assert "Tunnel shop deleted" in _template_annotations(kube, ns, "shop").get("mproxy.dev/roll-reason", "")

    def plain_pods() -> bool:
        pods = [p for p in _list(kube, "pods", ns, "app=shop") if not p["metadata"].get("deletionTimestamp")]
        return len(pods) == 1 and not sidecars(pods[0])

    kube.wait_for(plain_pods, timeout=60, what="the rolled pod without a sidecar")


def test_a_namespace_with_tunnels_is_deleted_promptly(kube: Any, operator: Operator) -> None:
    name = f"t-del-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, f"{NS_LABEL}={operator.ns_label}")
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel("one"), tunnel("two"), namespace=name)
    wait_tunnel(
        kube,
        name,
        "two",
        "finalizer",
        lambda t: "mproxy.dev/finalizer" in t["metadata"].get("finalizers", []),
    )
    started = time.monotonic()
    kube.kubectl("delete", "namespace", name, "--timeout=60s")
    assert time.monotonic() - started < 60
    assert kube.kubectl("get", "namespace", name, check=False).returncode != 0


# ---------------------------------------------------------------------------------------------
# connector mode (formerly "Gateway mode")


def test_connector_mode_runs_an_owned_deployment(kube: Any, operator: Operator, ns: str) -> None:
    body = tunnel("cn", mode="Connector", connector={"replicas": 2})
    del body["spec"]["selector"]
    _apply(kube, service("web", [("https", 443)]), secret(), body, namespace=ns)
    t = wait_tunnel(
        kube,
        ns,
        "cn",
        "ConnectorAvailable",
        lambda t: _condition(t, "ConnectorAvailable").get("status") == "True",
        timeout=60,
    )
    assert _condition(t, "Ready")["status"] == "True"
    assert t["status"]["connectorReadyReplicas"] == 2
    dep = _get(kube, "deployment", "mproxy-connector-cn", ns)
    assert dep is not None and dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == t["metadata"]["uid"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "mproxy-sidecar" and container["args"][0] == "sidecar"

    body["spec"]["connector"]["replicas"] = 3
    _apply(kube, body, namespace=ns)
    kube.wait_for(
        lambda: (_get(kube, "deployment", "mproxy-connector-cn", ns) or {}).get("spec", {}).get("replicas")
        == 3,
        timeout=45,
        what="the connector scaled to 3",
    )
    kube.kubectl("delete", "tunnel", "cn", "-n", ns, "--timeout=60s")
    kube.wait_for(
        lambda: _get(kube, "deployment", "mproxy-connector-cn", ns) is None,
        timeout=60,
        what="the garbage collector to delete the connector",
    )


def test_a_gateway_mode_tunnel_from_before_the_rename_becomes_a_connector(
    kube: Any, operator: Operator, ns: str
) -> None:
    """`mode: Gateway` and `gateway.replicas` still work; the Deployment an older operator ran
    (mproxy-gw-<name>, label mproxy.dev/gateway) and its status counts are replaced, not left running."""
    body = tunnel("old", mode="Gateway", gateway={"replicas": 1})
    del body["spec"]["selector"]
    _apply(kube, service("web", [("https", 443)]), secret(), namespace=ns)
    _apply(kube, body, namespace=ns)
    wait_tunnel(kube, ns, "old", "a status", lambda t: "configHash" in (t.get("status") or {}))
    legacy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mproxy-gw-old", "labels": {"mproxy.dev/gateway": "old"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"legacy": "old"}},
            "template": {
                "metadata": {"labels": {"legacy": "old"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    _apply(kube, legacy, namespace=ns)
    kube.kubectl(
        "patch", "tunnel", "old", "-n", ns, "--subresource=status", "--type=merge",
        "-p", '{"status": {"gatewayReplicas": 1, "gatewayReadyReplicas": 1}}',
    )
    body["spec"]["logLevel"] = "debug"  # any change: the next reconcile sees the old status
    _apply(kube, body, namespace=ns)
    wait_tunnel(
        kube, ns, "old", "the legacy counts gone",
        lambda t: "gatewayReplicas" not in t["status"] and "connectorReplicas" in t["status"],
        timeout=45,
    )
    connector = _get(kube, "deployment", "mproxy-connector-old", ns)
    assert connector is not None and connector["spec"]["replicas"] == 1
    kube.wait_for(
        lambda: _get(kube, "deployment", "mproxy-gw-old", ns) is None,
        timeout=30,
        what="the pre-rename Deployment deleted",
    )


# ---------------------------------------------------------------------------------------------
# the operator process


def test_metrics_and_webhook_certificate_secret(kube: Any, operator: Operator, ns: str) -> None:
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel("metered"), namespace=ns)
    wait_tunnel(kube, ns, "metered", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
    text = operator.metrics()
    assert _metric(text, 'mproxy_operator_reconciles_total{result="ok",trigger="change"}') > 0
    assert "mproxy_operator_webhook_duration_seconds_bucket" in text
    assert "mproxy_operator_tunnels" in text
    assert "process_resident_memory_bytes" in text  # the process collectors are on the operator's registry
    tls = _get(kube, "secret", f"{FULLNAME}-webhook-tls", operator.namespace)
    assert tls is not None and set(tls["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    hook = json.loads(kube.kubectl("get", "mutatingwebhookconfiguration", FULLNAME, "-o", "json").stdout)
    assert hook["webhooks"][0]["clientConfig"]["caBundle"] == tls["data"]["ca.crt"]
    assert "Traceback" not in operator.log.read_text(errors="replace")


def test_a_second_replica_stands_by_but_answers_the_webhook(
    kube: Any, operator: Operator, ns: str, tmp_path: Path
) -> None:
    """kopf peering: the lower-priority replica pauses Tunnel handling; admission is served by both."""
    webhook_port, http_port = free_port(), free_port()
    cmd = list(operator.cmd)
    for flag, value in (
        ("--webhook-listen", f"127.0.0.1:{webhook_port}"),
        ("--http-listen", f"127.0.0.1:{http_port}"),
        ("--priority", "50"),
    ):
        cmd[cmd.index(flag) + 1] = value
    log = tmp_path / "second.log"
    proc = spawn_operator(cmd, log)
    second = Operator(
        kube, proc, log, f"http://127.0.0.1:{http_port}", operator.namespace, operator.ns_label, cmd
    )
    try:
        kube.wait_for(second.ready, timeout=60, what="the second replica's /readyz (its webhook answers)")

        def joined() -> bool:
            peering = json.loads(kube.kubectl("get", "clusterkopfpeering", FULLNAME, "-o", "json").stdout)
            return 50 in {p.get("priority") for p in (peering.get("status") or {}).values()}

        kube.wait_for(joined, timeout=60, what="the second replica in the ClusterKopfPeering")
        _apply(kube, service("web", [("https", 443)]), secret(), tunnel("standby"), namespace=ns)
        wait_tunnel(kube, ns, "standby", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
        # The Tunnel was handled by the first replica only.
        assert (
            _metric(second.metrics(), 'mproxy_operator_reconciles_total{result="ok",trigger="change"}') == 0
        )
        # Both certificates are the same (kept in one Secret), so either replica can serve the apiserver.
        operator.alive()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
