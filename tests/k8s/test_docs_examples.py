"""The Tunnel examples in the README and docs/operator.md are valid against the real CRD (server-side dry
run), so the first thing a user copies works."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_operator import wait_established

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "docs" / "operator.md"]


def tunnel_examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
            for obj in yaml.safe_load_all(block):
                if isinstance(obj, dict) and obj.get("kind") == "Tunnel":
                    found.append((f"{doc.name}:{obj['metadata']['name']}", obj))
    return found


def test_the_docs_show_tunnel_examples() -> None:
    names = [name for name, _ in tunnel_examples()]
    assert any(n.startswith("README.md") for n in names) and any(n.startswith("operator.md") for n in names)


@pytest.mark.parametrize(("where", "tunnel"), tunnel_examples(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_tunnel_example_is_accepted_by_the_apiserver(kube: Any, kube_namespace: str, where: str,
                                                     tunnel: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
    wait_established(kube, "tunnels.mproxy.dev")
    tunnel = {**tunnel, "metadata": {**tunnel["metadata"], "namespace": kube_namespace}}
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(tunnel), check=False)
    assert result.returncode == 0, f"{where}: {result.stderr}"
