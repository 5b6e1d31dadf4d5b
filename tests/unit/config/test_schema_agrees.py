"""The config tables (mproxy/config/schema.py) are the one definition of every field: the docs' config
reference lists exactly their keys with their defaults, and renamed keys are still read."""

from __future__ import annotations

import logging
import re
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest

from mproxy.config import schema
from mproxy.config.edge import EdgeConfig, load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import SidecarConfig, load_sidecar_config

DOCS = Path(__file__).resolve().parents[3] / "docs"


def doc_rows(name: str) -> dict[str, str]:
    """`| key | default | meaning |` rows of a doc's config reference: {dotted key: default cell}.
    A cell `a.b.c` / `.d` with default `x / y` is two rows, a.b.c = x and a.b.d = y."""
    text = (DOCS / name).read_text()
    table = text[text.index("| key | default | meaning |"):].split("\n\n", 1)[0]
    out = {}
    for line in table.splitlines()[2:]:
        key_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        keys = re.findall(r"`([^`]+)`", key_cell)
        defaults = default_cell.split(" / ") if len(keys) > 1 else [default_cell]
        assert len(defaults) in (1, len(keys)), line
        base = keys[0].rsplit(".", 1)[0]
        for i, key in enumerate(keys):
            out[base + key if key.startswith(".") else key] = defaults[min(i, len(defaults) - 1)]
    return out


def written(spec: schema.Spec, default: Any) -> str | None:
    """A default as the docs write it; None where the docs describe it in words."""
    if default is MISSING:
        return "required"
    value = spec.dump(default)
    if value is None or value == []:
        return None
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


@pytest.mark.parametrize(("doc", "cls"), [("sidecar.md", SidecarConfig), ("edge.md", EdgeConfig)])
def test_docs_list_every_key_with_its_default(doc: str, cls: type) -> None:
    rows = doc_rows(doc)
    keys = {key: written(spec, default) for key, spec, default in schema.walk(cls)}
    assert sorted(set(keys) - set(rows)) == [], f"keys missing from docs/{doc}"
    assert sorted(set(rows) - set(keys)) == [], f"docs/{doc} lists keys the schema does not have"
    wrong = {k: (rows[k], v) for k, v in keys.items() if v is not None and rows[k] != v}
    assert wrong == {}, f"docs/{doc} default (docs, schema)"


def test_the_check_fails_on_a_wrong_default(monkeypatch: pytest.MonkeyPatch) -> None:
    original = doc_rows

    def stale(name: str) -> dict[str, str]:
        return original(name) | {"limits.maxFrameBytes": "65536"}

    monkeypatch.setitem(globals(), "doc_rows", stale)
    with pytest.raises(AssertionError, match="maxFrameBytes"):
        test_docs_list_every_key_with_its_default("sidecar.md", SidecarConfig)


EDGE_RENAMES = [("streamsPerTunnel", "maxStreamsPerTunnel", "streams_per_tunnel"),
                ("connectionsPerClient", "maxStreamsPerClient", "connections_per_client")]


@pytest.mark.parametrize(("old", "new", "attr"), EDGE_RENAMES)
def test_edge_limits_take_the_sidecar_names(old: str, new: str, attr: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mproxy.config"):
        cfg = load_edge_config(f"auth: {{secretFile: s}}\nlimits: {{{new}: 7}}")
    assert getattr(cfg.limits, attr) == 7 and caplog.records == []
    assert cfg.to_dict()["limits"][new] == 7 and old not in cfg.to_dict()["limits"]
    assert new in (load_sidecar_config("edge: {urls: [ws://e/]}").to_dict()["limits"])


@pytest.mark.parametrize(("old", "new", "attr"), EDGE_RENAMES)
def test_old_edge_limit_names_still_work_with_a_warning(old: str, new: str, attr: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mproxy.config"):
        cfg = load_edge_config(f"auth: {{secretFile: s}}\nlimits: {{{old}: 7}}")
    assert getattr(cfg.limits, attr) == 7
    assert [r.getMessage() for r in caplog.records] == [
        f"config: limits.{old} is deprecated, rename it to limits.{new} (same meaning)"]
    with pytest.raises(ConfigError, match=f"^limits.{old}: must be 1-1000000"):
        load_edge_config(f"auth: {{secretFile: s}}\nlimits: {{{old}: 0}}")
    with pytest.raises(ConfigError, match=f"^limits.{old}: is the old name of {new}: give only {new}"):
        load_edge_config(f"auth: {{secretFile: s}}\nlimits: {{{old}: 7, {new}: 7}}")


def test_the_docs_full_edge_example_loads_without_a_deprecation(caplog: pytest.LogCaptureFixture) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / "edge.md").read_text(), re.S)
    (full,) = [b for b in blocks if "auth:" in b]
    with caplog.at_level(logging.WARNING, "mproxy.config"):
        cfg = load_edge_config(full)
    assert cfg.limits.streams_per_tunnel == 1000 and caplog.records == []
