"""Certificates for TLS: a small CA and leaf certificates (demo, tests, webhook)."""
