"""Proof that the test control plane is a real Kubernetes: each test needs a part a mock would not have.

Schema validation (apiextensions), controllers (deployment/replicaset/garbage collector), the
scheduler and kwok (pods Running on fake nodes), admission webhooks called over HTTPS, RBAC, and
the versions of kubectl and helm matching the server.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.k8s.bodies import as_body

from mproxy.ca import CertificateAuthority

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

GROUP = "smoke.mproxy.test"


# ---------------------------------------------------------------------------------------------
# CustomResourceDefinition with a structural schema


def _crd(plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["port"],
                                    "properties": {
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "mode": {"type": "string", "enum": ["tcp", "http"]},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_schema_accepts_good_and_rejects_bad_custom_resources(kube: Any, kube_namespace: str) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    ext = client.ApiextensionsV1Api(kube.api_client())
    ext.create_custom_resource_definition(as_body(_crd(plural)))
    try:
        def established() -> bool:
            status = ext.read_custom_resource_definition(f"{plural}.{GROUP}").status
            return status is not None and any(
                c.type == "Established" and c.status == "True" for c in status.conditions or [])

        kube.wait_for(established, what="the CRD to be Established")
        objs = client.CustomObjectsApi(kube.api_client())

        def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
            return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}

        # The CRD is Established a moment before its REST endpoint serves: retry only the 404.
        def create_good() -> bool:
            try:
                objs.create_namespaced_custom_object(
                    GROUP, "v1", kube_namespace, plural, widget("good", {"port": 8080, "mode": "tcp"})
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        kube.wait_for(create_good, what="the custom resource endpoint")
        got = cast(dict[str, Any],  # custom objects come back as the JSON dicts they are
                   objs.get_namespaced_custom_object(GROUP, "v1", kube_namespace, plural, "good"))
        assert got["spec"] == {"port": 8080, "mode": "tcp"}

        cases: list[tuple[str, dict[str, Any], str]] = [
            ("too-big", {"port": 70000}, "spec.port"),
            ("wrong-type", {"port": "eighty"}, "spec.port"),
            ("bad-enum", {"port": 80, "mode": "udp"}, "spec.mode"),
            ("missing", {"mode": "tcp"}, "spec.port"),
        ]
        for name, spec, field_path in cases:
            with pytest.raises(ApiException) as info:
                objs.create_namespaced_custom_object(GROUP, "v1", kube_namespace, plural, widget(name, spec))
            assert info.value.status == 422, name
            assert field_path in (info.value.body or ""), (name, info.value.body)
        listed = cast(dict[str, Any], objs.list_namespaced_custom_object(GROUP, "v1", kube_namespace, plural))
        names = [o["metadata"]["name"] for o in listed["items"]]
        assert names == ["good"]
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{GROUP}")


# ---------------------------------------------------------------------------------------------
# controllers, scheduler and kwok; garbage collection


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_deployment_becomes_running_pods_on_kwok_nodes(kube: Any, kube_namespace: str) -> None:
    apps = client.AppsV1Api(kube.api_client())
    core = client.CoreV1Api(kube.api_client())
    apps.create_namespaced_deployment(kube_namespace, as_body(_deployment("web", 3)))

    def running() -> list[Any]:
        pods = core.list_namespaced_pod(kube_namespace, label_selector="app=web").items
        up = [p for p in pods if p.status is not None and p.status.phase == "Running" and p.status.pod_ip]
        return up if len(up) == 3 else []

    pods = kube.wait_for(running, what="3 Running pods of Deployment web")
    assert {p.spec.node_name for p in pods} <= set(kube.nodes)  # placed by kube-scheduler
    owners = {p.metadata.owner_references[0].kind for p in pods}
    assert owners == {"ReplicaSet"}  # made by the replicaset controller, not by us
    def available() -> bool:
        status = apps.read_namespaced_deployment("web", kube_namespace).status
        return status is not None and status.available_replicas == 3

    kube.wait_for(available, what="the Deployment to report 3 available replicas")

    # Scaling goes through the same controllers.
    apps.patch_namespaced_deployment_scale("web", kube_namespace, {"spec": {"replicas": 1}})
    kube.wait_for(
        lambda: len(core.list_namespaced_pod(kube_namespace, label_selector="app=web").items) == 1,
        what="the Deployment to scale down to 1 pod (kwok finishes the deletions)",
    )


def test_garbage_collector_deletes_dependents_through_owner_references(
    kube: Any, kube_namespace: str
) -> None:
    core = client.CoreV1Api(kube.api_client())
    owner = core.create_namespaced_config_map(kube_namespace, as_body({"metadata": {"name": "owner"}}))
    assert owner.metadata is not None
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for name in ("child-a", "child-b"):
        core.create_namespaced_config_map(
            kube_namespace, as_body({"metadata": {"name": name, "ownerReferences": [ref]}})
        )
    core.create_namespaced_config_map(kube_namespace, as_body({"metadata": {"name": "bystander"}}))

    core.delete_namespaced_config_map("owner", kube_namespace, propagation_policy="Background")

    def children_gone() -> bool:
        names = {c.metadata.name for c in core.list_namespaced_config_map(kube_namespace).items if c.metadata}
        return "child-a" not in names and "child-b" not in names

    kube.wait_for(children_gone, what="the garbage collector to delete the dependents")
    bystander = core.read_namespaced_config_map("bystander", kube_namespace)
    assert bystander.metadata is not None and bystander.metadata.name == "bystander"


def test_foreground_deletion_of_a_deployment_removes_its_replicasets_and_pods(
    kube: Any, kube_namespace: str
) -> None:
    apps = client.AppsV1Api(kube.api_client())
    core = client.CoreV1Api(kube.api_client())
    apps.create_namespaced_deployment(kube_namespace, as_body(_deployment("gone", 2)))
    kube.wait_for(
        lambda: len(core.list_namespaced_pod(kube_namespace, label_selector="app=gone").items) == 2,
        what="2 pods of Deployment gone",
    )
    apps.delete_namespaced_deployment("gone", kube_namespace, propagation_policy="Foreground")
    kube.wait_for(
        lambda: (
            not core.list_namespaced_pod(kube_namespace, label_selector="app=gone").items
            and not apps.list_namespaced_replica_set(kube_namespace).items
            and not apps.list_namespaced_deployment(kube_namespace).items
        ),
        what="the Deployment, its ReplicaSet and its pods to be deleted",
    )


# ---------------------------------------------------------------------------------------------
# RBAC


def test_rbac_denies_an_unprivileged_token_until_a_role_allows_it(kube: Any, kube_namespace: str) -> None:
    user = client.CoreV1Api(kube.api_client(kube.user_token))
    with pytest.raises(ApiException) as info:
        user.list_namespaced_pod(kube_namespace)
    assert info.value.status == 403
    assert info.value.body is not None
    message = json.loads(info.value.body)["message"]
    assert f'User "{kube.user_name}" cannot list resource "pods"' in message

    # The same denial through kubectl with the user's kubeconfig.
    res = kube.kubectl("get", "pods", "-n", kube_namespace, kubeconfig=kube.user_kubeconfig, check=False)
    assert res.returncode != 0
    assert "forbidden" in res.stderr.lower()

    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    rbac.create_namespaced_role(
        kube_namespace,
        as_body({
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        }),
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        as_body({
            "metadata": {"name": "alice-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": kube.user_name}],
        }),
    )
    kube.wait_for(
        lambda: user.list_namespaced_pod(kube_namespace) is not None, what="the RoleBinding to apply"
    )
    # Only what the role grants: secrets and other namespaces stay forbidden.
    for call in (
        lambda: user.list_namespaced_secret(kube_namespace),
        lambda: user.list_namespaced_pod("default"),
    ):
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 403
    can = kube.kubectl(
        "auth", "can-i", "delete", "pods", "-n", kube_namespace, kubeconfig=kube.user_kubeconfig, check=False
    )
    assert can.stdout.strip() == "no"


# ---------------------------------------------------------------------------------------------
# a mutating admission webhook served by this test process


@dataclass
class _Webhook:
    url: str
    ca_pem: bytes
    requests: list[dict[str, Any]] = field(default_factory=list)


def _webhook_tls(tmp: Path) -> tuple[ssl.SSLContext, bytes]:
    """A CA and a 127.0.0.1 serving certificate; returns the server context and the CA PEM."""
    ca = CertificateAuthority.create("webhook-test-ca", days=1)
    return ca.issue(["127.0.0.1"], days=1).server_context(tmp, "tls"), ca.cert_pem


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[_Webhook]:
    """An HTTPS admission webhook: labels ConfigMaps, denies ones annotated smoke/deny."""
    ctx, ca_pem = _webhook_tls(tmp_path)
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            req = review["request"]
            seen.append(req)
            annotations = (req["object"].get("metadata") or {}).get("annotations") or {}
            response: dict[str, Any] = {"uid": req["uid"], "allowed": True}
            if "smoke/deny" in annotations:
                response = {
                    "uid": req["uid"],
                    "allowed": False,
                    "status": {"code": 403, "message": "denied by the smoke webhook"},
                }
            else:
                labels = (req["object"].get("metadata") or {}).get("labels")
                patch = (
                    [{"op": "add", "path": "/metadata/labels/smoke~1mutated", "value": "yes"}]
                    if labels
                    else [{"op": "add", "path": "/metadata/labels", "value": {"smoke/mutated": "yes"}}]
                )
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
            body = json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Webhook(f"https://127.0.0.1:{server.server_address[1]}/mutate", ca_pem, seen)
    finally:
        server.shutdown()
        server.server_close()


def test_mutating_webhook_served_by_the_test_is_called_by_the_apiserver(
    kube: Any, kube_namespace: str, webhook: _Webhook
) -> None:
    adm = client.AdmissionregistrationV1Api(kube.api_client())
    core = client.CoreV1Api(kube.api_client())
    name = f"smoke-{kube_namespace}"
    adm.create_mutating_webhook_configuration(
        as_body({
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "configmaps.smoke.mproxy.test",
                    "clientConfig": {
                        "url": webhook.url,
                        "caBundle": base64.b64encode(webhook.ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    # Only this test's namespace: a webhook must never touch the rest of the cluster.
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": kube_namespace}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }
            ],
        })
    )
    try:
        # The apiserver picks up webhook configurations from an informer: wait with dry-run creates.
        def mutated_dry_run() -> bool:
            cm = core.create_namespaced_config_map(
                kube_namespace, as_body({"metadata": {"name": "probe"}}), dry_run="All"
            )
            return cm.metadata is not None and (cm.metadata.labels or {}).get("smoke/mutated") == "yes"

        kube.wait_for(mutated_dry_run, what="the webhook configuration to take effect")
        before = len(webhook.requests)

        cm = core.create_namespaced_config_map(
            kube_namespace,
            as_body({"metadata": {"name": "real", "labels": {"app": "x"}}, "data": {"k": "v"}}),
        )
        assert cm.metadata is not None and cm.metadata.labels == {"app": "x", "smoke/mutated": "yes"}
        stored = core.read_namespaced_config_map("real", kube_namespace)
        assert stored.metadata is not None and stored.metadata.labels == {"app": "x", "smoke/mutated": "yes"}
        req = webhook.requests[before]
        assert req["operation"] == "CREATE"
        assert req["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
        assert req["namespace"] == kube_namespace
        assert req["name"] == "real"
        assert req["userInfo"]["username"] == "admin"

        with pytest.raises(ApiException) as info:
            core.create_namespaced_config_map(
                kube_namespace, as_body({"metadata": {"name": "denied", "annotations": {"smoke/deny": "1"}}})
            )
        assert info.value.status == 403
        assert "denied by the smoke webhook" in (info.value.body or "")

        # Outside the selected namespace the webhook is not called.
        calls = len(webhook.requests)
        other = core.create_namespaced_config_map("default",
                                                  as_body({"metadata": {"generateName": "smoke-"}}))
        assert other.metadata is not None and other.metadata.name is not None
        core.delete_namespaced_config_map(other.metadata.name, "default")
        assert len(webhook.requests) == calls
        assert not (other.metadata.labels or {})
    finally:
        adm.delete_mutating_webhook_configuration(name)


# ---------------------------------------------------------------------------------------------
# versions and tools


def test_server_kubectl_and_helm_versions_match_the_pins(kube: Any, tmp_path: Path) -> None:
    assert kube.version == "v1.36.3"
    out = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == "v1.36.3"
    assert out["serverVersion"]["gitVersion"] == "v1.36.3"
    helm_version = kube.run_helm("version", "--template", "{{.Version}}").stdout.strip()
    assert helm_version == "v3.21.4"

    # helm installs a chart whose kubeVersion constraint only a correctly versioned server passes.
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\nkubeVersion: '>=1.36.0-0 <1.37.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  k: v\n"
    )
    ns = f"helm-{uuid.uuid4().hex[:6]}"
    kube.run_helm(
        "install", "smoke", str(chart), "-n", ns, "--create-namespace", "--wait", "--timeout", "60s"
    )
    try:
        assert (
            kube.kubectl("get", "configmap", "smoke-cm", "-n", ns, "-o", "jsonpath={.data.k}").stdout == "v"
        )
        listed = json.loads(kube.run_helm("list", "-n", ns, "-o", "json").stdout)
        assert [(r["name"], r["status"]) for r in listed] == [("smoke", "deployed")]
    finally:
        kube.run_helm("uninstall", "smoke", "-n", ns, check=False)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_kwok_nodes_are_ready_and_report_kwok(kube: Any) -> None:
    core = client.CoreV1Api(kube.api_client())
    nodes = {n.metadata.name: n for n in core.list_node(label_selector="type=kwok").items if n.metadata}
    assert set(kube.nodes) <= set(nodes)
    for name in kube.nodes:
        status = nodes[name].status
        assert status is not None and status.conditions is not None and status.node_info is not None
        assert any(c.type == "Ready" and c.status == "True" for c in status.conditions)
        assert status.node_info.kubelet_version.startswith("kwok-")
