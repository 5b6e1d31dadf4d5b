"""Configuration schemas (sidecar, edge): validation with errors that name the field, loading, reload.

`mproxy.config.sidecar` is the sidecar schema (the operator's contract), `mproxy.config.edge` the edge's;
both build on `schema` (each field declared once, on its dataclass: key, type, default and bounds),
`fields` (typed readers) and `common` (the http, logging and buffer-rule fields they share).
`mproxy.config.loader` reads a file and watches it (ConfigMap symlink swaps included); `ConfigError` is the
one error type.
"""

from mproxy.config.errors import ConfigError

__all__ = ["ConfigError"]
