"""One address per Gateway against the real control plane: a GatewayClass whose parameters carry a
`listenerGroups` pool (the example of docs/gateway-api.md, "One address per Gateway") gives each
Gateway its own group and addresses, refuses one past the pool with AddressNotAssigned, and frees a
deleted Gateway's group for the next one."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from tests.k8s.test_gateway_api import _cond, _examples, _status, gwop  # noqa: F401 (gwop: a fixture)
from tests.k8s.test_operator import Operator, _apply, _get

from mproxy.config.sidecar import load_sidecar_config
from mproxy_operator.gateway_api.addresses import GROUP_ANNOTATION

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

A = [{"type": "IPAddress", "value": "203.0.113.10"}]
B = [{"type": "IPAddress", "value": "203.0.113.11"}, {"type": "Hostname", "value": "b.edge.example.com"}]


def _pool_class(kube: Any, op: Operator, name: str) -> None:
    (cm,) = json.loads(json.dumps(_examples()["listenergroups"]))
    gc = json.loads(json.dumps(_examples()["gatewayclass"][1]))
    cm["metadata"] = {"name": f"{name}-params", "namespace": op.namespace}
    gc["metadata"] = {"name": name}
    gc["spec"]["parametersRef"].update(name=f"{name}-params", namespace=op.namespace)
    _apply(kube, cm, gc)


def _gateway(name: str, cls: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"gatewayClassName": cls, "listeners": [
            {"name": "tls", "protocol": "TLS", "port": 443, "hostname": "*.shop.example.com",
             "tls": {"mode": "Passthrough"}}]},
    }


def test_one_group_per_gateway_exhaustion_and_release(
    kube: Any, gwop: Operator, kube_namespace: str  # noqa: F811 (the imported fixture)
) -> None:
    ns, cls = kube_namespace, f"mproxy-{uuid.uuid4().hex[:6]}"
    _pool_class(kube, gwop, cls)

    def programmed(name: str, status: str = "True", reason: str | None = None) -> dict[str, Any] | None:
        st = _status(kube, "gateway", name, ns)
        c = _cond(st.get("conditions") or [], "Programmed")
        return st if c.get("status") == status and reason in (None, c.get("reason")) else None

    def group(name: str) -> str | None:
        cm = _get(kube, "configmap", f"mproxy-gateway-{name}", ns)
        if cm is None:
            return None
        config = load_sidecar_config(yaml.safe_load(cm["data"]["config.yaml"]))
        (g,) = config.edge.listener_groups
        assert cm["metadata"]["annotations"][GROUP_ANNOTATION] == g  # the record is what the connector asks
        return g

    # One after the other, so the ages are distinct: the first takes the pool's first group.
    _apply(kube, _gateway("gw1", cls), namespace=ns)
    one = kube.wait_for(lambda: programmed("gw1"), timeout=60, what="Gateway gw1 Programmed")
    _apply(kube, _gateway("gw2", cls), namespace=ns)
    two = kube.wait_for(lambda: programmed("gw2"), timeout=60, what="Gateway gw2 Programmed")
    assert one["addresses"] == A and two["addresses"] == B
    assert (group("gw1"), group("gw2")) == ("gw-a", "gw-b")

    _apply(kube, _gateway("gw3", cls), namespace=ns)
    three = kube.wait_for(lambda: programmed("gw3", "False", "AddressNotAssigned"), timeout=60,
                          what="Gateway gw3 Programmed False AddressNotAssigned")
    assert three["addresses"] == []
    assert "every listener group" in _cond(three["conditions"], "Programmed")["message"]
    assert _cond(three["conditions"], "Accepted")["status"] == "True"
    assert _get(kube, "deployment", "mproxy-gateway-gw3", ns) is None  # no address: no connector

    # Deleting gw1 frees gw-a: gw3 gets it, gw2 keeps its own. By age alone gw2 would now take gw-a:
    # it keeps gw-b because the operator reads the assignment back from the apiserver (its connector
    # ConfigMap) on every reconcile, as a restarted operator or another replica does.
    kube.kubectl("delete", "gateway", "gw1", "-n", ns, "--timeout=60s")
    three = kube.wait_for(lambda: programmed("gw3"), timeout=60, what="Gateway gw3 Programmed after gw1 left")
    assert three["addresses"] == A and group("gw3") == "gw-a"
    assert _status(kube, "gateway", "gw2", ns)["addresses"] == B and group("gw2") == "gw-b"

    # spec.addresses naming the address gw2 holds: not usable; one outside the pool: unsupported.
    taken, outside = _gateway("gw4", cls), _gateway("gw5", cls)
    taken["spec"]["addresses"] = [{"type": "IPAddress", "value": "203.0.113.11"}]
    outside["spec"]["addresses"] = [{"type": "IPAddress", "value": "192.0.2.1"}]
    _apply(kube, taken, outside, namespace=ns)
    kube.wait_for(lambda: programmed("gw4", "False", "AddressNotUsable"), timeout=60,
                  what="Gateway gw4 Programmed False AddressNotUsable")
    five = kube.wait_for(
        lambda: (s := _status(kube, "gateway", "gw5", ns))
        and _cond(s.get("conditions") or [], "Accepted").get("reason") == "UnsupportedAddress" and s,
        timeout=60, what="Gateway gw5 Accepted False UnsupportedAddress",
    )
    assert _cond(five["conditions"], "Accepted")["status"] == "False"
    assert group("gw2") == "gw-b"  # nobody took it over

    # gw3 asks for an address outside the pool: it loses gw-a and its connector; asking for nothing
    # again, it gets gw-a back, recorded again although its ConfigMap's data is what it was.
    def patch(name: str, spec: dict[str, Any]) -> None:
        kube.kubectl("patch", "gateway", name, "-n", ns, "--type", "merge", "-p", json.dumps({"spec": spec}))

    def annotations() -> dict[str, str]:
        cm = _get(kube, "configmap", "mproxy-gateway-gw3", ns) or {}
        return dict(cm.get("metadata", {}).get("annotations") or {})

    patch("gw3", {"addresses": [{"type": "IPAddress", "value": "192.0.2.1"}]})
    kube.wait_for(lambda: GROUP_ANNOTATION not in annotations()
                  and _get(kube, "deployment", "mproxy-gateway-gw3", ns) is None
                  and _cond(_status(kube, "gateway", "gw3", ns)["conditions"], "Accepted")
                  .get("reason") == "UnsupportedAddress",
                  timeout=60, what="gw3 UnsupportedAddress, without connector or group record")
    patch("gw3", {"addresses": None})
    kube.wait_for(lambda: programmed("gw3"), timeout=60, what="Gateway gw3 Programmed again")
    kube.wait_for(lambda: annotations().get(GROUP_ANNOTATION) == "gw-a", timeout=30,
                  what="gw3's group recorded again")
    assert group("gw3") == "gw-a" and _status(kube, "gateway", "gw3", ns)["addresses"] == A
