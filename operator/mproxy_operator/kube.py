"""A small JSON client for the Kubernetes API: dicts in, dicts out.

It rides on the official client's ApiClient (kubeconfig and in-cluster loading, TLS, tokens), but skips
its typed models: the operator's logic works on plain dicts, like the objects kopf hands to handlers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from mproxy_operator import names

TIMEOUT = 10.0
MERGE = "application/merge-patch+json"


class KubeError(Exception):
    """A failed API call, with the HTTP status and the server's message (never a token)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status} {reason}: {message}".strip())

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_api_client(kubeconfig: str | None) -> Any:
    """In-cluster when running in a pod (and no kubeconfig is given), else the kubeconfig."""
    if kubeconfig:
        return k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        return k8s_config.new_client_from_config()  # type: ignore[no-untyped-call]
    return k8s_client.ApiClient()


def _q(part: str) -> str:
    return quote(part, safe="")


class Kube:
    def __init__(self, api_client: Any) -> None:
        self._client = api_client

    @property
    def configuration(self) -> Any:
        """The official client's Configuration (host, CA, token...), also used to log kopf in."""
        return self._client.configuration

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, payload, _ = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._client.call_api(m, url, header_params=hdrs, body=payload, _request_timeout=TIMEOUT)
        except k8s_client.ApiException as exc:
            raise KubeError(int(exc.status or 0), str(exc.reason or exc)) from None
        raw = resp.read()
        data: Any = json.loads(raw) if raw else {}
        if resp.status >= 400:
            message = data.get("message", "") if isinstance(data, dict) else str(raw[:200])
            reason = data.get("reason", "") if isinstance(data, dict) else ""
            raise KubeError(resp.status, message, reason)
        return data if isinstance(data, dict) else {}

    # --- reads ---
    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    def items(
        self, path: str, label_selector: str | None = None, *, cached: bool = False
    ) -> list[dict[str, Any]]:
        """List objects. `cached` reads the apiserver's watch cache as it is (resourceVersion=0) instead of
        waiting for it to catch up with etcd, which can take ~100 ms on a quiet cluster."""
        query = {"labelSelector": label_selector} if label_selector else {}
        if cached:
            query["resourceVersion"] = "0"
        result: list[dict[str, Any]] = self.request("GET", path, query=query or None).get("items") or []
        return result

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/version")

    # --- writes ---
    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type=MERGE)

    def delete(self, path: str) -> bool:
        try:
            self.request("DELETE", path, {"propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True


# --- paths (one place, so the RBAC list in the chart can be checked against them) ---
def core(namespace: str, plural: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{_q(namespace)}/{plural}"
    return f"{base}/{_q(name)}" if name else base


def apps(namespace: str, plural: str, name: str | None = None) -> str:
    base = f"/apis/apps/v1/namespaces/{_q(namespace)}/{plural}"
    return f"{base}/{_q(name)}" if name else base


def tunnels(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    base = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{_q(namespace)}/{names.PLURAL}"
    path = f"{base}/{_q(name)}" if name else base
    return f"{path}/{sub}" if sub else path


def namespace(name: str) -> str:
    return f"/api/v1/namespaces/{_q(name)}"


def mutating_webhook(name: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{_q(name)}"
