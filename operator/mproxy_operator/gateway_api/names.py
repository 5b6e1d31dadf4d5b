"""Gateway API names: group, versions, kinds, the controller name, and the objects the operator makes."""

from __future__ import annotations

from urllib.parse import quote

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
CONTROLLER_NAME = "mproxy.dev/gateway-controller"

# (kind, plural, the listener protocol whose routes it is)
TLS_ROUTE = "TLSRoute"
TCP_ROUTE = "TCPRoute"
UDP_ROUTE = "UDPRoute"
HTTP_ROUTE = "HTTPRoute"
ROUTE_PLURALS = {TLS_ROUTE: "tlsroutes", TCP_ROUTE: "tcproutes", UDP_ROUTE: "udproutes",
                 HTTP_ROUTE: "httproutes"}
# HTTP and HTTPS listeners both take HTTPRoutes: HTTPS ones terminate TLS in the connector first.
ROUTE_KIND_FOR_PROTOCOL = {
    "TLS": TLS_ROUTE, "TCP": TCP_ROUTE, "UDP": UDP_ROUTE, "HTTP": HTTP_ROUTE, "HTTPS": HTTP_ROUTE,
}
# The listener protocols whose routes carry no hostnames and match on the port alone.
PORT_PROTOCOLS = ("TCP", "UDP")
PORT_ROUTES = (TCP_ROUTE, UDP_ROUTE)

# On the connector Deployment and ConfigMap of a Gateway: the Gateway's name.
GATEWAY_LABEL = "mproxy.dev/gateway-api-gateway"

# Every feature the conformance suite may test that mproxy implements (the spec's names).
SUPPORTED_FEATURES = ("Gateway", "ReferenceGrant", "TLSRoute", "TCPRoute", "UDPRoute")
# Claimed only when the connector has its HTTP router (mproxy.config: httpRouters). Each extended feature
# here passes its conformance tests (docs/conformance/); not claimed: backendRef filters
# (HTTPRouteBackendRequestHeaderModification), mirrors, CORS, retries, H2C, destination-port matching.
HTTP_FEATURES = (
    "HTTPRoute",
    "HTTPRouteQueryParamMatching", "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect", "HTTPRouteSchemeRedirect", "HTTPRoutePathRedirect",
    "HTTPRoute303RedirectStatusCode", "HTTPRoute307RedirectStatusCode", "HTTPRoute308RedirectStatusCode",
    "HTTPRouteHostRewrite", "HTTPRoutePathRewrite",
    "HTTPRouteRequestTimeout", "HTTPRouteBackendTimeout",
    "HTTPRouteParentRefPort", "HTTPRouteBackendProtocolWebSocket",
)


def connector_name(gateway: str) -> str:
    return f"mproxy-gateway-{gateway}"


def certs_secret_name(gateway: str) -> str:
    """The Secret the operator owns per Gateway: the certificateRefs' tls.crt/tls.key, as files."""
    return f"{connector_name(gateway)}-certs"


CERTS_VOLUME = "mproxy-certs"
CERTS_DIR = "/var/run/mproxy/certs"


def cert_files(namespace: str, name: str) -> tuple[str, str]:
    """The keys in the certs Secret (and file names under CERTS_DIR) of one referenced Secret. A
    namespace has no dots, so `<namespace>.<name>` is unique."""
    return f"{namespace}.{name}.crt", f"{namespace}.{name}.key"


def path(plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    return f"{base}/{sub}" if sub else base


def reference_grants(namespace: str) -> str:
    # ReferenceGrant is served as v1 and v1beta1 by v1.6; v1beta1 is what older CRD bundles have too.
    return f"/apis/{GROUP}/v1beta1/namespaces/{quote(namespace, safe='')}/referencegrants"
