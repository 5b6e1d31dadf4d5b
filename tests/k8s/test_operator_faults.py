"""Operator faults on the real control plane: the webhook down, the apiserver restarted in the middle of
a reconcile, a namespace deleted with Tunnels in it while the operator is down.

One `mproxy operator` subprocess per module, started as tests/k8s/test_operator.py starts it (the
chart's RBAC and ServiceAccount, a URL webhook on 127.0.0.1 with failurePolicy Fail). Killing and
restarting it keeps its command line, so it comes back on the same ports with the same identity.

A restarted operator gets a higher kopf peering priority than the one killed, as a replacement pod may
draw. With an equal or lower one it pauses until the dead peer's record in the ClusterKopfPeering
expires (kopf's peering lifetime, 60 s): reconciles and finalizer removal then wait up to a minute
after an active replica is SIGKILLed (measured: the namespace below took 56 s with an equal priority).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.k8s.test_operator import (
    FULLNAME,
    INJECT,
    NS_LABEL,
    Operator,
    _apply,
    _condition,
    _get,
    _list,
    ns_fixture,
    operator_fixture,
    secret,
    service,
    sidecars,
    spawn_operator,
    tunnel,
    wait_tunnel,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]


def kill_operator(op: Operator) -> None:
    """SIGKILL, as when its pods are evicted: no goodbye, the webhook stops answering at once."""
    os.killpg(op.proc.pid, signal.SIGKILL)
    op.proc.wait(timeout=10)


def restart_operator(op: Operator) -> None:
    """Start it again as a replacement pod would come up: same ports and identity, a new peering
    priority. (A higher one: with the same or a lower one, kopf pauses it until the killed peer's
    peering record expires, up to its 60 s lifetime; see the module docstring.)"""
    flag = op.cmd.index("--priority") + 1
    op.cmd[flag] = str(int(op.cmd[flag]) + 1)
    op.proc = spawn_operator(op.cmd, op.log)
    op.kube.wait_for(op.ready, timeout=60, what="the restarted operator's /readyz")


def restart_apiserver(kube: Any) -> float:
    """Stop kube-apiserver (SIGKILL: no graceful hand-over) and start it again with the same command
    line, port and certificates; returns the seconds until /readyz answered again. The fixture stops
    the new process at the end of the session like the old one."""
    (old,) = [p for p in kube._procs if p.name == "kube-apiserver"]
    args = list(old.popen.args)
    os.killpg(old.popen.pid, signal.SIGKILL)
    old.popen.wait(timeout=10)
    kube._procs.remove(old)
    started = time.monotonic()
    kube._spawn("kube-apiserver", *args[1:], exe=Path(args[0]))
    kube._wait_ready()
    return time.monotonic() - started


operator = operator_fixture(alive_at_end=False)  # the tests kill and restart it
ns = ns_fixture()


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "shop:1"}]}}


def create_pod(kube: Any, ns: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = kube.kubectl(
        "create", "-n", ns, "-f", "-", input=yaml.safe_dump(body), check=False)
    return result


def set_failure_policy(kube: Any, policy: str) -> None:
    patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}]
    kube.kubectl("patch", "mutatingwebhookconfiguration", FULLNAME, "--type=json", "-p", json.dumps(patch))


def test_webhook_down_follows_the_failure_policy(kube: Any, operator: Operator, ns: str) -> None:
    """docs/operator.md: `webhook.failurePolicy` Fail (the default): an opted-in pod is not created
    without its sidecar; Ignore: it starts without. Pods that did not opt in never depend on it."""
    _apply(kube, service("web", [("https", 443)]), secret(), tunnel(), namespace=ns)
    wait_tunnel(kube, ns, "shop", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
    kill_operator(operator)
    try:
        refused = create_pod(kube, ns, pod("refused", {"app": "shop", **INJECT}))
        assert refused.returncode != 0 and "inject.mproxy.dev" in refused.stderr, refused.stderr
        assert _get(kube, "pod", "refused", ns) is None
        plain = create_pod(kube, ns, pod("plain", {"app": "shop"}))  # not opted in: not sent to the webhook
        assert plain.returncode == 0, plain.stderr

        set_failure_policy(kube, "Ignore")
        # the apiserver picks the new policy up from its informer within a moment
        kube.wait_for(lambda: create_pod(kube, ns, pod("ignored", {"app": "shop", **INJECT})).returncode == 0,
                      timeout=30, what="the opted-in pod admitted under failurePolicy Ignore")
        p = _get(kube, "pod", "ignored", ns)
        assert p is not None and not sidecars(p)
        set_failure_policy(kube, "Fail")
    finally:
        restart_operator(operator)
    # back: opted-in pods get their sidecar again
    kube.wait_for(lambda: create_pod(kube, ns, pod("injected", {"app": "shop", **INJECT})).returncode == 0,
                  timeout=30, what="the opted-in pod admitted once the operator is back")
    p = _get(kube, "pod", "injected", ns)
    assert p is not None and len(sidecars(p)) == 1
    # and the Tunnel says one of its (opted-in) pods started without the sidecar while the webhook was down
    def counted(t: dict[str, Any]) -> bool:
        status = t.get("status") or {}
        return bool(status.get("selectedPods") == 2 and status.get("injectedPods") == 1
                    and _condition(t, "SidecarsInjected").get("reason") == "PodsWithoutSidecar")

    wait_tunnel(kube, ns, "shop", "the pod without a sidecar reported", counted, timeout=60)
    operator.alive()


def test_apiserver_restarted_during_a_reconcile(kube: Any, operator: Operator, ns: str) -> None:
    _apply(kube, service("web", [("https", 443), ("http", 80)]), secret(), tunnel(), namespace=ns)
    wait_tunnel(kube, ns, "shop", "reconciled", lambda t: "configHash" in (t.get("status") or {}))
    # a route change: the operator starts rendering and patching while the apiserver goes away
    body = tunnel()
    body["spec"]["routes"].append({"name": "plain", "match": {"services": ["http"]},
                                   "backend": {"service": "web", "port": "http"}})
    _apply(kube, body, namespace=ns)
    took = restart_apiserver(kube)
    print(f"apiserver back after {took:.1f} s")
    operator.alive()

    def rendered(routes: int) -> bool:
        cm = _get(kube, "configmap", "mproxy-shop", ns)
        return cm is not None and len(yaml.safe_load(cm["data"]["config.yaml"])["routes"]) == routes

    kube.wait_for(lambda: rendered(2), timeout=90, what="the route change rendered after the restart")
    def caught_up(t: dict[str, Any]) -> bool:
        return bool((t.get("status") or {}).get("observedGeneration") == t["metadata"]["generation"])

    t = wait_tunnel(kube, ns, "shop", "status of generation 2", caught_up, timeout=90)
    assert t["metadata"]["generation"] == 2
    # the operator's watch came back too: a later change is handled as well
    body["spec"]["routes"].pop()
    _apply(kube, body, namespace=ns)
    kube.wait_for(lambda: rendered(1), timeout=90, what="a change after the restart rendered")
    operator.alive()


def test_namespace_deleted_while_the_operator_is_down_finishes_when_it_is_back(
    kube: Any, operator: Operator
) -> None:
    name = f"t-gone-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, f"{NS_LABEL}={operator.ns_label}")
    _apply(kube, service("web", [("https", 443)]), secret(), *(tunnel(f"t{i}") for i in range(5)),
           namespace=name)
    for i in range(5):
        wait_tunnel(kube, name, f"t{i}", "finalizer",
                    lambda t: "mproxy.dev/finalizer" in t["metadata"].get("finalizers", []))
    kill_operator(operator)
    try:
        kube.kubectl("delete", "namespace", name, "--wait=false")
        time.sleep(3)  # nobody removes the finalizers meanwhile: the namespace waits, Terminating
        ns_obj = json.loads(kube.kubectl("get", "namespace", name, "-o", "json").stdout)
        assert ns_obj["status"]["phase"] == "Terminating"
        assert len(_list(kube, "tunnels", name)) == 5
    finally:
        restart_operator(operator)
    started = time.monotonic()

    def tunnels_left() -> int:
        res = kube.kubectl("get", "tunnels", "-n", name, "-o", "name", check=False)
        return len(res.stdout.split()) if res.returncode == 0 else 0

    # the operator lets every Tunnel of a terminating namespace go at once (docs/operator.md)
    kube.wait_for(lambda: tunnels_left() == 0, timeout=30, what=f"the Tunnels of {name} to go")
    released = time.monotonic() - started
    # then the namespace controller finishes on its own retry schedule (its backoff grew while the
    # operator was down)
    kube.wait_for(lambda: kube.kubectl("get", "namespace", name, check=False).returncode != 0,
                  timeout=120, what=f"namespace {name} to finish deleting once the operator is back")
    print(f"operator back: Tunnels released after {released:.1f} s, "
          f"namespace gone after {time.monotonic() - started:.1f} s")
    operator.alive()
