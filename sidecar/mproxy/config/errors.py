"""The one error type every config schema raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is missing or invalid. The message starts with the field path, e.g.
    "routes[2].backend.port: must be 1-65535 (got 0)"."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)
