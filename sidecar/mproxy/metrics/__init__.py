"""Prometheus metrics with cardinality guards (per route, per client)."""
