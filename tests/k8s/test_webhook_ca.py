"""The operator writes its CA into the MutatingWebhookConfiguration even when that object appears after the
operator started (Helm creates the kind after Deployments), and says so clearly when it never does."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from tests.k8s.bodies import as_body

from mproxy_operator.kube import Kube
from mproxy_operator.webhook_certs import inject_ca_bundle

pytestmark = pytest.mark.k8s

CA = b"-----BEGIN CERTIFICATE-----\ntest-ca\n-----END CERTIFICATE-----\n"


def _config(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.ca-test.mproxy.test",
                "clientConfig": {"url": "https://127.0.0.1:9/never-called"},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"]}],
                # Selects nothing: this webhook must never take part in another test's admission.
                "objectSelector": {"matchLabels": {"mproxy.test/never": name}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Ignore",
            }
        ],
    }


def test_the_ca_is_injected_into_a_webhook_configuration_created_after_start(kube: Any) -> None:
    adm = client.AdmissionregistrationV1Api(kube.api_client())
    name = f"ca-late-{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {}

    def inject() -> None:
        try:
            result["changed"] = inject_ca_bundle(Kube(kube.api_client()), name, CA, wait_seconds=30)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=inject)
    worker.start()
    try:
        time.sleep(1.5)  # the operator is up and waiting; now Helm gets to the webhook configuration
        assert worker.is_alive(), f"inject_ca_bundle gave up before the configuration existed: {result}"
        adm.create_mutating_webhook_configuration(as_body(_config(name)))
        worker.join(timeout=20)
        assert not worker.is_alive(), "inject_ca_bundle kept waiting after the configuration appeared"
        assert result == {"changed": 1}
        stored = adm.read_mutating_webhook_configuration(name)
        assert stored.webhooks is not None
        assert stored.webhooks[0].client_config.ca_bundle == base64.b64encode(CA).decode()
    finally:
        worker.join(timeout=35)
        try:
            adm.delete_mutating_webhook_configuration(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


def test_a_webhook_configuration_that_never_appears_is_a_clear_error(kube: Any) -> None:
    name = f"ca-missing-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"{name} did not appear within 1 s.*--webhook-config"):
        inject_ca_bundle(Kube(kube.api_client()), name, CA, wait_seconds=1)
    assert time.monotonic() - started < 10
