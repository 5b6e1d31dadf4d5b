"""Shared Tunnel and Service fixtures for the operator's unit tests (plain dicts, as the API returns)."""

from __future__ import annotations

import copy
from typing import Any

BASE_TUNNEL: dict[str, Any] = {
    "apiVersion": "mproxy.dev/v1alpha1",
    "kind": "Tunnel",
    "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-1", "generation": 3},
    "spec": {
        "selector": {"matchLabels": {"app": "shop"}},
        "edge": {
            "urls": ["wss://edge.example.com/mproxy"],
            "tokenSecretRef": {"name": "edge-token"},
        },
        "routes": [
            {
                "name": "web",
                "match": {"services": ["https"], "hostnames": ["shop.example.com", "*.shop.example.com"]},
                "backend": {"service": "web", "port": "https"},
            },
            {
                "name": "ssh",
                "match": {"services": ["ssh"], "ports": [22]},
                "backend": {"service": "bastion", "port": 22},
                "proxyProtocol": "v2",
                "connectTimeoutSeconds": 2,
            },
        ],
    },
}

SERVICES: dict[str, dict[str, Any]] = {
    "web": {
        "metadata": {"name": "web"},
        "spec": {
            "clusterIP": "10.0.0.10",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": 8443},
            ],
        },
    },
    "bastion": {
        "metadata": {"name": "bastion"},
        "spec": {
            "clusterIP": "10.0.0.11",
            "ports": [
                {"port": 22, "targetPort": 2222},
            ],
        },
    },
}


def tunnel(**spec_overrides: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE_TUNNEL)
    for key, value in spec_overrides.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    return body


def pod(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "shop-",
            "namespace": "prod",
            "labels": {"app": "shop", "mproxy.dev/inject": "enabled"} if labels is None else labels,
        },
        "spec": {
            "containers": [{"name": "app", "image": "shop:1", "ports": [{"containerPort": 8443}]}],
            **spec,
        },
    }
