"""The Helm chart and manifests/ against the real apiserver: lint, render, install, server-side dry run.

There is no container runtime: kwok plays the kubelets, so the operator Deployment's pods become
"Running" without running anything. What is checked is what the apiserver and controllers do with the
objects (schema validation, RBAC, webhook configuration, Deployments, PodDisruptionBudget).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mproxy"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def _template(kube: Any, *args: str, namespace: str = "mproxy-system") -> list[dict[str, Any]]:
    out = kube.run_helm("template", "mproxy", str(CHART), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _kinds(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_helm_lint_with_every_ci_values_file(kube: Any) -> None:
    assert len(CI_VALUES) >= 3
    for values in CI_VALUES:
        res = kube.run_helm("lint", str(CHART), "--strict", "-f", str(values), check=False)
        assert res.returncode == 0, f"{values.name}: {res.stdout}{res.stderr}"


def test_the_schema_rejects_unknown_and_bad_values(kube: Any) -> None:
    for bad, expect in (
        ("operator.replicaz=2", "replicaz"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=99", "timeoutSeconds"),
    ):
        res = kube.run_helm("template", "x", str(CHART), "--set", bad, check=False)
        assert res.returncode != 0 and expect in res.stderr, res.stderr
    res = kube.run_helm("template", "x", str(CHART), "--set", "edge.enabled=true", check=False)
    assert res.returncode != 0 and "edge.secretName is required" in res.stderr


def test_default_render(kube: Any) -> None:
    docs = _kinds(_template(kube))
    dep = docs[("Deployment", "mproxy-operator")]
    assert dep["spec"]["replicas"] == 2
    selector = dep["spec"]["selector"]["matchLabels"]
    assert "helm.sh/chart" not in selector and "app.kubernetes.io/version" not in selector
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/mproxy/mproxy:0.1.0"
    assert container["args"][0] == "operator"
    assert "--webhook-config=mproxy" in container["args"]
    assert "--webhook-host=mproxy-webhook.mproxy-system.svc" in container["args"]
    assert "--sidecar-status" in container["args"]  # the Tunnels' EdgesConnected condition
    sc = container["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )

    (hook,) = docs[("MutatingWebhookConfiguration", "mproxy")]["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None" and hook["timeoutSeconds"] == 5
    assert hook["clientConfig"]["service"] == {
        "name": "mproxy-webhook",
        "namespace": "mproxy-system",
        "path": "/inject-sidecar",
        "port": 443,
    }
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["operator"] == "NotIn" and {"kube-system", "mproxy-system"} <= set(expr["values"])
    assert hook["objectSelector"] == {"matchLabels": {"mproxy.dev/inject": "enabled"}}

    role = docs[("ClusterRole", "mproxy-operator")]
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"], "no cluster-wide Secret access"
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    hook_rule = next(r for r in role["rules"] if "mutatingwebhookconfigurations" in r["resources"])
    assert hook_rule["resourceNames"] == ["mproxy"]
    assert docs[("PodDisruptionBudget", "mproxy-operator")]["spec"]["minAvailable"] == 1
    assert ("ClusterKopfPeering", "mproxy") in docs
    assert not [r for r in role["rules"] if "gateway.networking.k8s.io" in r["apiGroups"]]
    assert "--gateway-api" not in container["args"]
    for optional in ("NetworkPolicy", "ServiceMonitor", "PodMonitor", "Certificate", "PrometheusRule"):
        assert not [k for k in docs if k[0] == optional], optional


def _render_every_option(kube: Any, *args: str) -> list[dict[str, Any]]:
    """Every optional part on: ci/full-values.yaml with cert-manager."""
    full, cert_manager = CHART / "ci" / "full-values.yaml", CHART / "ci" / "cert-manager-values.yaml"
    return _template(kube, "-f", str(full), "-f", str(cert_manager), *args)


def test_full_render_with_every_option(kube: Any) -> None:
    docs = _render_every_option(kube)
    by = _kinds(docs)
    kinds = {k for k, _ in by}
    assert {
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "Certificate",
        "Issuer",
        "PrometheusRule",
    } <= kinds
    dep = by[("Deployment", "mproxy-operator")]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-cert-dir=/var/run/mproxy/webhook-tls" in args
    assert "--gateway-api" in args  # gatewayAPI.enabled, with its RBAC
    gw_rules = [r for r in by[("ClusterRole", "mproxy-operator")]["rules"]
                if "gateway.networking.k8s.io" in r["apiGroups"]]
    assert {"gateways", "tlsroutes", "tcproutes", "udproutes", "httproutes", "referencegrants",
            "gateways/status", "httproutes/status", "udproutes/status"} <= {
                res for r in gw_rules for res in r["resources"]}
    # HTTPS listeners' certificateRefs: Secrets cluster-wide, only with gatewayAPI.enabled.
    assert any("secrets" in r["resources"] and "watch" in r["verbs"]
               for r in by[("ClusterRole", "mproxy-operator")]["rules"])
    assert not [a for a in args if a.startswith("--webhook-config")], "cert-manager injects the CA"
    hook = by[("MutatingWebhookConfiguration", "mproxy")]
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "mproxy-system/mproxy-webhook"
    cert = by[("Certificate", "mproxy-webhook")]  # the one the cainjector reads the CA from
    assert cert["spec"]["dnsNames"] == [
        "mproxy-webhook.mproxy-system.svc",
        "mproxy-webhook.mproxy-system.svc.cluster.local",
    ]
    assert hook["webhooks"][0]["failurePolicy"] == "Ignore"
    # No Secret rights when cert-manager makes the certificate: the one Role is the edge's, read-only on
    # endpointslices (edge.replicasFromEndpointSlices).
    assert [k for k in by if k[0] == "Role"] == [("Role", "mproxy-edge")]
    assert by[("Role", "mproxy-edge")]["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["get", "list", "watch"]}]

    # The edge: its rendered config is one the edge's own schema accepts.
    from mproxy.config.edge import load_edge_config

    cm = by[("ConfigMap", "mproxy-edge-config")]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects of one kind share a name"
    config = load_edge_config(cm["data"]["edge.yaml"])
    assert config.secret_file == "/var/run/mproxy/edge/secret"
    edge = by[("Deployment", "mproxy-edge")]
    assert edge["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "edge",
        "--config",
        "/etc/mproxy/edge.yaml",
    ]
    assert by[("Service", "mproxy-edge")]["spec"]["type"] == "ClusterIP"
    # Scale-out: every edge announces the Deployment's replica count and its pod name as its id; the
    # headless Service gives in-cluster sidecars one address per ready edge pod.
    pod = edge["spec"]["template"]["spec"]
    assert config.replicas == edge["spec"]["replicas"]
    assert config.replicas_from is not None and config.replicas_from.service == "mproxy-edge-tunnel"
    assert pod["serviceAccountName"] == "mproxy-edge" and pod["automountServiceAccountToken"] is True
    binding = by[("RoleBinding", "mproxy-edge")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mproxy-edge", "namespace": "mproxy-system"}]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        pod["containers"][0]["env"])
    headless = by[("Service", "mproxy-edge-tunnel")]["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["name"] for p in headless["ports"]] == ["tunnel"]
    assert headless["selector"].items() <= edge["spec"]["template"]["metadata"]["labels"].items()
    # Forwarding: peers are the headless Service's addresses, the forward port is a container port, the
    # HMAC key is the auth Secret's (no peers.secretFile).
    assert config.peers is not None and config.peers.secret_file is None
    assert config.peers.hostname == "mproxy-edge-tunnel.mproxy-system.svc.cluster.local"
    assert {"name": "forward", "containerPort": config.peers.host_port[1], "protocol": "TCP"} in (
        pod["containers"][0]["ports"])
    pdb = by[("PodDisruptionBudget", "mproxy-edge")]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"] == headless["selector"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == headless["selector"]
    # UDP listeners: the Service and the container expose DNS on UDP and TCP under one number; a listener
    # group's port (tenant-a, refused with close) is a listener like the others.
    assert [item.kind for item in config.listeners] == ["tls", "http", "udp", "tcp", "tls"]
    grouped = [(item.listen, item.group, item.tls_refusal) for item in config.listeners if item.group]
    assert grouped == [("0.0.0.0:8444", "tenant-a", "close")]
    service = by[("Service", "mproxy-edge")]
    service_ports = {(p["name"], p["port"], p["protocol"]) for p in service["spec"]["ports"]}
    assert {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("https", 443, "TCP"),
            ("https-tenant-a", 8444, "TCP")} <= service_ports
    container_ports = {(p["name"], p["containerPort"], p["protocol"])
                       for p in edge["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP"),
            ("https-tenant-a", 8444, "TCP")} <= container_ports
    # Its metrics: a PodMonitor on the edge pods' http-metrics port (the Service above is the public one).
    monitor = by[("PodMonitor", "mproxy-edge")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        edge["spec"]["template"]["metadata"]["labels"].items())
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http-metrics"]
    assert "http-metrics" in {p["name"] for p in edge["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_cluster_domain_is_the_only_dns_suffix_in_the_chart(kube: Any) -> None:
    """operator.clusterDomain reaches the operator and the webhook Certificate; nothing says cluster.local."""
    docs = _render_every_option(kube, "--set", "operator.clusterDomain=corp.internal")
    by = _kinds(docs)
    args = by[("Deployment", "mproxy-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cluster-domain=corp.internal" in args
    assert by[("Certificate", "mproxy-webhook")]["spec"]["dnsNames"] == [
        "mproxy-webhook.mproxy-system.svc",
        "mproxy-webhook.mproxy-system.svc.corp.internal",
    ]
    assert not [(d["kind"], d["metadata"]["name"]) for d in docs if "cluster.local" in yaml.safe_dump(d)]
    bad = "operator.clusterDomain=cluster.local."  # a trailing dot would make invalid DNS names
    res = kube.run_helm("template", "x", str(CHART), "--set", bad, check=False)
    assert res.returncode != 0 and "clusterDomain" in res.stderr, res.stderr


def test_helm_install_into_the_real_apiserver(kube: Any) -> None:
    ns = f"mproxy-helm-{uuid.uuid4().hex[:6]}"
    release = f"h{uuid.uuid4().hex[:6]}"
    res = kube.run_helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        ns,
        "--create-namespace",
        "--set",
        "operator.replicas=2",
        "--wait=false",
        timeout=120,
    )
    try:
        assert "STATUS: deployed" in res.stdout
        full = f"{release}-mproxy"
        objects = json.loads(
            kube.kubectl(
                "get", "deployment,service,serviceaccount,poddisruptionbudget,role", "-n", ns, "-o", "json"
            ).stdout
        )["items"]
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        assert {
            ("Deployment", f"{full}-operator"),
            ("Service", f"{full}-webhook"),
            ("ServiceAccount", f"{full}-operator"),
            ("PodDisruptionBudget", f"{full}-operator"),
            ("Role", f"{full}-operator"),
        } <= names
        hook = json.loads(kube.kubectl("get", "mutatingwebhookconfiguration", full, "-o", "json").stdout)
        assert hook["webhooks"][0]["clientConfig"]["service"]["name"] == f"{full}-webhook"
        kube.kubectl("get", "clusterkopfpeering", full)
        # The controllers make the pods; kwok "runs" them (the probes are not really executed).
        kube.wait_for(
            lambda: (
                json.loads(
                    kube.kubectl("get", "deployment", f"{full}-operator", "-n", ns, "-o", "json").stdout
                )["status"].get("availableReplicas")
                == 2
            ),
            timeout=60,
            what="2 available operator replicas",
        )
        # failurePolicy Fail + objectSelector: with no operator answering (kwok runs no process), a pod
        # that opted in is refused, one that did not is created, and the release namespace is exempt.
        other = f"mproxy-probe-{uuid.uuid4().hex[:6]}"
        kube.kubectl("create", "namespace", other)
        try:
            opted = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "opted", "labels": {"mproxy.dev/inject": "enabled"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }
            plain = {**opted, "metadata": {"name": "plain"}}
            res = kube.kubectl("apply", "-n", other, "-f", "-", input=yaml.safe_dump(opted), check=False)
            assert res.returncode != 0 and 'failed calling webhook "inject.mproxy.dev"' in res.stderr, (
                res.stderr
            )
            kube.kubectl("apply", "-n", other, "-f", "-", input=yaml.safe_dump(plain))
            kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(opted))
        finally:
            kube.kubectl("delete", "namespace", other, "--wait=false", check=False)
        sa = f"system:serviceaccount:{ns}:{full}-operator"
        for verb, resource, expected in (
            ("patch", "tunnels.mproxy.dev/status", "yes"),
            ("list", "services", "yes"),
            ("create", "configmaps", "yes"),
            ("get", "secrets", "no"),
            ("delete", "pods", "no"),
        ):
            got = kube.kubectl("auth", "can-i", verb, resource, "--as", sa, "-A", check=False).stdout.strip()
            assert got == expected, f"{verb} {resource}: {got}"
    finally:
        kube.run_helm("uninstall", release, "--namespace", ns, "--wait=false", check=False)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_install_with_the_edge_into_the_real_apiserver(kube: Any) -> None:
    """edge.enabled installs the public Service, the headless tunnel Service, the PDB and the config
    with the announced replica count, and the server accepts them all."""
    ns = f"mproxy-edge-{uuid.uuid4().hex[:6]}"
    release = f"e{uuid.uuid4().hex[:6]}"
    kube.run_helm("install", release, str(CHART), "--namespace", ns, "--create-namespace", "--set",
                  "edge.enabled=true", "--set", "edge.secretName=edge-secret", "--set", "edge.replicas=3",
                  "--wait=false", timeout=120)
    try:
        full = f"{release}-mproxy-edge"
        headless = json.loads(kube.kubectl("get", "service", f"{full}-tunnel", "-n", ns, "-o", "json").stdout)
        assert headless["spec"]["clusterIP"] == "None"
        pdb = json.loads(kube.kubectl("get", "pdb", full, "-n", ns, "-o", "json").stdout)
        assert pdb["spec"]["maxUnavailable"] == 1
        cm = json.loads(kube.kubectl("get", "configmap", f"{full}-config", "-n", ns, "-o", "json").stdout)
        assert yaml.safe_load(cm["data"]["edge.yaml"])["replicas"] == 3
    finally:
        kube.run_helm("uninstall", release, "--namespace", ns, "--wait=false", check=False)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_manifests_are_current_and_the_server_accepts_them(kube: Any) -> None:
    res = subprocess.run(
        [str(REPO / "scripts" / "render-manifests"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=kube.env(HELM=str(kube.helm)),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    kube.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
    path = '{.status.conditions[?(@.type=="Established")].status}'
    for crd in (
        "tunnels.mproxy.dev",
        "clusterkopfpeerings.kopf.dev",
    ):  # kubectl wait fails before conditions exist
        kube.wait_for(
            lambda crd=crd: (
                kube.kubectl("get", "crd", crd, "-o", f"jsonpath={path}", check=False).stdout == "True"
            ),
            timeout=30,
            what=f"CRD {crd}",
        )
    # A server-side dry run does not create the Namespace, so the namespaced objects need it to exist.
    kube.kubectl("create", "namespace", "mproxy-system", check=False)
    res = kube.kubectl("apply", "--dry-run=server", "-f", str(REPO / "manifests" / "mproxy.yaml"))
    assert (
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/mproxy created (server dry run)"
        in res.stdout
    )
    assert "deployment.apps/mproxy-operator created (server dry run)" in res.stdout
