"""The reference oracle: one long-lived node process (tests/interop/node/codec-oracle.js) per session."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need

from mproxy.codec import Connection, Error, Event

REPO = Path(__file__).resolve().parents[3]
NODE_DIR = REPO / "tests" / "interop" / "node"


class Oracle:
    def __init__(self, node: str) -> None:
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / "codec-oracle.js")], cwd=NODE_DIR, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=1,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the node oracle died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def pack(self, fn: str, meta: dict[str, Any], data: Any, service: str | None) -> bytes:
        """Packer.pack(meta, data, service) or Packer.packHeader(meta, data, service, true)."""
        spec = None if data is None else ({"b64": b64(data)} if isinstance(data, bytes) else {"json": data})
        request = {"op": "pack", "fn": fn, "meta": meta, "data": spec, "service": service, "andBody": True}
        answer = self.ask(request)
        assert "error" not in answer, answer
        return base64.b64decode(answer["b64"])

    def parse(self, chunks: list[bytes]) -> dict[str, Any]:
        """The reference state machine's events (normalised like `ours`) for these chunks."""
        answer = self.ask({"op": "parse", "chunks": [b64(c) for c in chunks if c]})
        answer["events"] = [_norm_ref(e) for e in answer.get("events", [])]
        return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_KEYS = ("family", "address", "port", "service", "serviceport", "name")


def _norm_ref(e: dict[str, Any]) -> dict[str, Any]:
    out = {"event": e["event"], **{k: e.get(k) or "" for k in _KEYS}, "data": e.get("data")}
    if e["event"] == "error":
        out["message"], out["code"] = e.get("message"), e.get("code")
    return out


def norm_ours(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"event": e.kind, **{k: getattr(e, k) for k in _KEYS}, "data": b64(e.data) or None}
    if isinstance(e, Error):
        out["message"], out["code"] = e.message, e.code
    assert not isinstance(e, Connection) or e.service == e.servicename
    return out


@pytest.fixture(scope="session")
def oracle(node_bin: str) -> Iterator[Oracle]:
    o = Oracle(node_bin)
    assert o.ask({"op": "ping"}) == {"pong": True}
    yield o
    o.close()


@pytest.fixture(scope="session")
def norm() -> Any:
    return norm_ours


@pytest.fixture(scope="session")
def packjs_env(node_bin: str) -> dict[str, str]:
    """Environment in which `node test/pack.js` finds its undeclared `sni` dependency."""
    # test/pack.js requires the npm `sni` package, which proxy-packer does not declare;
    # tests/interop/node/package.json lists it beside proxy-packer.
    need((NODE_DIR / "node_modules" / "sni").is_dir(), "npm sni 1.0.0 (run scripts/bootstrap)")
    return dict(os.environ)
