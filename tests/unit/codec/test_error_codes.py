"""Every wire error code is documented in docs/protocol.md, and the enum is its only definition."""

from __future__ import annotations

import re
from pathlib import Path

from mproxy.codec.errors import ErrorCode

REPO = Path(__file__).resolve().parents[3]


def test_every_error_code_is_in_the_protocol_doc_table() -> None:
    doc = (REPO / "docs" / "protocol.md").read_text()
    table = doc.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M))
    assert documented == {code.value for code in ErrorCode}


def test_no_module_defines_its_own_error_code_constant() -> None:
    pattern = re.compile(r'^E_[A-Z_]+ = "E', flags=re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "sidecar" / "mproxy").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []


def test_codes_compare_and_serialise_as_their_wire_strings() -> None:
    import json

    wire: str = ErrorCode.LIMIT  # a str subclass: it is its wire string
    assert wire == "E_LIMIT"
    assert json.dumps({"code": ErrorCode.LIMIT}) == '{"code": "E_LIMIT"}'
    assert f"{ErrorCode.NO_ROUTE}" == "E_NO_ROUTE"
