"""Configuration schemas (sidecar, edge): validation with errors that name the field, loading, reload."""
