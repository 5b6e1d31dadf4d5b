"""mproxy data plane: the M-PROXY codec, the tunnel, and the sidecar and edge roles."""

__version__ = "0.1.0"
