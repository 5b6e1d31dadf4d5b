"""Fixtures for the codec unit tests (importlib import mode: share through fixtures, not imports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mproxy.codec import Connection, Control, Error, Event

VECTORS_DIR = Path(__file__).parent / "vectors"


def _event_json(e: Event) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event": e.kind, "family": e.family, "address": e.address, "port": e.port, "service": e.service,
        "serviceport": e.serviceport, "name": e.name, "data_hex": e.data.hex(),
    }
    if isinstance(e, Connection):
        d["servicename"] = e.servicename
    if isinstance(e, Error):
        d["message"] = e.message
        d["code"] = e.code
    if isinstance(e, Control):
        d["value"] = e.value
    return d


@pytest.fixture(scope="session")
def event_json() -> Callable[[Event], dict[str, Any]]:
    """Event -> the JSON shape used in vectors/vectors.json."""
    return _event_json


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR
