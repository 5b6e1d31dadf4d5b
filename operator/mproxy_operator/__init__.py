"""mproxy control plane: a kopf operator for the Tunnel custom resource and sidecar injection."""

__version__ = "0.1.0"
