"""PROXY protocol v1 and v2 headers: encode for backends, decode from trusted load balancers."""
