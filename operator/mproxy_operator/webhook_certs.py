"""Where the webhook's certificate comes from, and telling the apiserver which CA to trust.

Order: files already in --webhook-cert-dir (cert-manager), else the Secret --webhook-cert-secret
(created by the first replica, reused by the others), else a certificate for this process only.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mproxy_operator import kube
from mproxy_operator.certs import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    CertBundle,
    covers,
    expires_within,
    make_bundle,
)
from mproxy_operator.kube import Kube, KubeError

log = logging.getLogger("mproxy_operator.certs")
RENEW_DAYS = 30


def prepare(k: Kube, namespace: str, hosts: list[str], cert_dir: str | None, secret: str | None) -> Path:
    """Returns a directory holding tls.crt, tls.key and ca.crt."""
    if cert_dir and (Path(cert_dir) / CERT_FILE).exists() and (Path(cert_dir) / KEY_FILE).exists():
        log.info("webhook certificate: using the files in %s", cert_dir)
        return Path(cert_dir)
    bundle = _from_secret(k, namespace, secret, hosts) if secret else make_bundle(hosts)
    directory = Path(cert_dir) if cert_dir else Path(tempfile.mkdtemp(prefix="mproxy-webhook-"))
    return bundle.write(directory)


def _usable(data: dict[str, Any], hosts: list[str]) -> CertBundle | None:
    try:
        bundle = CertBundle(*(base64.b64decode(data[key]) for key in (CA_FILE, CERT_FILE, KEY_FILE)))
    except (KeyError, ValueError):
        return None
    try:
        if expires_within(bundle.cert_pem, RENEW_DAYS) or not covers(bundle.cert_pem, hosts):
            return None
    except ValueError:
        return None
    return bundle


def _secret_body(namespace: str, name: str, bundle: CertBundle, version: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "mproxy", "app.kubernetes.io/component": "webhook-certificate"},
    }
    if version:
        meta["resourceVersion"] = version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta,
        "data": {
            CA_FILE: base64.b64encode(bundle.ca_pem).decode(),
            CERT_FILE: base64.b64encode(bundle.cert_pem).decode(),
            KEY_FILE: base64.b64encode(bundle.key_pem).decode(),
        },
    }


def _from_secret(k: Kube, namespace: str, name: str, hosts: list[str]) -> CertBundle:
    path = kube.core(namespace, "secrets", name)
    for _attempt in range(5):
        current = k.get(path)
        if current is not None:
            found = _usable(current.get("data") or {}, hosts)
            if found is not None:
                log.info("webhook certificate: reusing Secret %s/%s", namespace, name)
                return found
        bundle = make_bundle(hosts)
        try:
            if current is None:
                k.create(kube.core(namespace, "secrets"), _secret_body(namespace, name, bundle, None))
            else:
                version = (current.get("metadata") or {}).get("resourceVersion")
                k.replace(path, _secret_body(namespace, name, bundle, version))
        except KubeError as exc:
            if exc.conflict:  # another replica won the race: read what it wrote
                continue
            raise
        log.info("webhook certificate: generated and stored in Secret %s/%s", namespace, name)
        return bundle
    raise RuntimeError(
        f"could not agree on the webhook certificate in Secret {namespace}/{name} after 5 tries"
    )


def _wait_for_config(k: Kube, path: str, config_name: str, wait_seconds: float) -> dict[str, Any]:
    """The MutatingWebhookConfiguration, waiting up to `wait_seconds` for it to appear: Helm creates that
    kind after Deployments, so on a first install the operator usually starts before it exists."""
    deadline = time.monotonic() + wait_seconds
    logged = False
    while True:
        current = k.get(path)
        if current is not None:
            return current
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"MutatingWebhookConfiguration {config_name} did not appear within {wait_seconds:g} s; "
                "install it (the Helm chart does) or drop --webhook-config"
            )
        if not logged:
            log.info("waiting for MutatingWebhookConfiguration %s to be created", config_name)
            logged = True
        time.sleep(0.5)


def inject_ca_bundle(k: Kube, config_name: str, ca_pem: bytes, *, wait_seconds: float = 120.0) -> int:
    """Put the CA into every webhook of the MutatingWebhookConfiguration; returns how many changed."""
    encoded = base64.b64encode(ca_pem).decode()
    path = kube.mutating_webhook(config_name)
    for _attempt in range(5):
        current = _wait_for_config(k, path, config_name, wait_seconds)
        changed = 0
        for hook in current.get("webhooks") or []:
            client_config = hook.setdefault("clientConfig", {})
            if client_config.get("caBundle") != encoded:
                client_config["caBundle"] = encoded
                changed += 1
        if not changed:
            return 0
        try:
            k.replace(path, current)
        except KubeError as exc:
            if exc.conflict:
                continue
            raise
        log.info("webhook CA bundle written into MutatingWebhookConfiguration %s", config_name)
        return changed
    raise RuntimeError(f"could not update MutatingWebhookConfiguration {config_name}: it kept changing")
