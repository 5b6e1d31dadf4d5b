"""HTTP endpoints shared by the roles: /healthz, /readyz, /metrics, status JSON; structured logging."""
