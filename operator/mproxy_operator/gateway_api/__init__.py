"""Gateway API support: GatewayClass, Gateway, TLS/TCP/UDP/HTTPRoute and ReferenceGrant (docs/gateway-api.md).

A Gateway of an mproxy GatewayClass becomes a connector Deployment (the same sidecar config a Tunnel
renders to) that dials the edge named by the class's parameters. Pure modules (params, listeners,
routes, status, render) compute; `reconcile` reads and writes the API; `handlers` registers it in kopf.
"""
