"""Manifest dicts as the bodies of the official client's typed API calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_body(manifest: Mapping[str, Any]) -> Any:
    """`manifest` as the body of a typed call (`core.create_namespace(as_body({...}))`). The client
    serialises a dict as it is (ApiClient.sanitize_for_serialization), but its annotations name only its
    own model classes (V1Namespace, V1ConfigMap...), which these tests do not build."""
    return manifest
