"""The edge config's `replicasFrom`: where the announced replica count comes from when it is not the static
`replicas` (docs/edge.md#replica-count-from-endpointslices).

    replicasFrom:
      endpointSlices:
        service: mproxy-edge-tunnel     # this edge's own headless Service (required)
        namespace: ingress              # default: the service account's namespace, else $POD_NAMESPACE
        apiServer: https://10.0.0.1     # default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
        tokenFile: ...                  # default: the mounted service account token
        caFile: ...                     # default: the mounted service account CA
        watchSeconds: 300               # one watch request; it then watches on (an error: list afresh)

Only the shape is checked here; the defaults that come from the pod (files, environment) are filled in when
the edge starts (mproxy.edge.endpointslices), so `mproxy edge --check` works anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mproxy.config import fields as f
from mproxy.config.errors import ConfigError

__all__ = ["SERVICE_ACCOUNT_DIR", "EndpointSlicesSource", "read_replicas_from"]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class EndpointSlicesSource:
    service: str
    namespace: str | None = None
    api_server: str | None = None
    token_file: str = f"{SERVICE_ACCOUNT_DIR}/token"
    ca_file: str = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
    watch_seconds: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.api_server is not None:
            out["apiServer"] = self.api_server
        return {"endpointSlices": out | {"tokenFile": self.token_file, "caFile": self.ca_file,
                                         "watchSeconds": self.watch_seconds}}


def read_replicas_from(root: Mapping[str, Any]) -> EndpointSlicesSource | None:
    if root.get("replicasFrom") is None:
        return None
    obj = f.mapping(root["replicasFrom"], "replicasFrom")
    f.only_keys(obj, "replicasFrom", {"endpointSlices"})
    if "endpointSlices" not in obj:
        raise ConfigError("replicasFrom", "needs endpointSlices: {service: <this edge's headless Service>}")
    path = "replicasFrom.endpointSlices"
    src = f.mapping(obj["endpointSlices"], path)
    f.only_keys(src, path, {"service", "namespace", "apiServer", "tokenFile", "caFile", "watchSeconds"})
    service = f.string(src, "service", path)
    namespace = f.opt_string(src, "namespace", path)
    for key, value in (("service", service), ("namespace", namespace)):
        if value is not None and not _DNS_LABEL.fullmatch(value):
            raise ConfigError(f"{path}.{key}", f"must be a Kubernetes name (lower-case DNS label, got "
                              f"{value[:80]!r})")
    api_server = f.opt_string(src, "apiServer", path)
    if api_server is not None and not api_server.startswith("https://"):
        raise ConfigError(f"{path}.apiServer", f"must be an https:// URL (got {api_server[:80]!r})")
    return EndpointSlicesSource(
        service=service,
        namespace=namespace,
        api_server=api_server.rstrip("/") if api_server else None,
        token_file=f.string(src, "tokenFile", path, f"{SERVICE_ACCOUNT_DIR}/token"),
        ca_file=f.string(src, "caFile", path, f"{SERVICE_ACCOUNT_DIR}/ca.crt"),
        watch_seconds=f.number(src, "watchSeconds", path, 300.0, 1, 3600),
    )
