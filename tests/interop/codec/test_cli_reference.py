"""`mproxy pack` against the reference's own `node test/pack.js`, and `mproxy unpack` against its parser."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mproxy.cli import main

pytestmark = pytest.mark.interop
PACK_JS = Path(__file__).resolve().parents[1] / "node" / "node_modules" / "proxy-packer" / "test" / "pack.js"
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ASCII = st.text(st.characters(max_codepoint=127, blacklist_characters=","), max_size=16)
ANY_TEXT = st.text(max_size=12)  # commas and non-ASCII too: the cases we must refuse
SCALAR = st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(-1e22, 1e22, allow_nan=False)
ADDRESS = st.fixed_dictionaries(
    {
        "family": st.sampled_from(["IPv4", "IPv6"]) | ASCII | SCALAR,
        "address": st.sampled_from(["127.0.0.1", "::ffff:10.0.0.1"]) | ASCII,
        "port": st.integers(0, 65535) | ASCII | SCALAR,
    },
    optional={
        "service": st.sampled_from(["https", "http", "tcp", ""]) | ASCII | SCALAR,
        "serviceport": st.sampled_from([443, 80, "8443", 0, ""]) | SCALAR,
        "name": ASCII | ANY_TEXT,
    },
)


def client_hello(name: bytes) -> bytes:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    sni = b"\x00\x00" + (len(entry) + 2).to_bytes(2, "big") + len(entry).to_bytes(2, "big") + entry
    exts = b"\x00\x17\x00\x00" + sni
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(exts).to_bytes(2, "big") + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


HOSTNAME = st.from_regex(r"[A-Za-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True)
PAYLOAD = st.one_of(
    HOSTNAME.map(lambda h: client_hello(h.split(":")[0].encode())),
    st.binary(max_size=40).map(client_hello),
    HOSTNAME.map(lambda h: f"GET / HTTP/1.1\r\nHost: {h}\r\nAccept: */*\r\n\r\n".encode()),
    ANY_TEXT.map(lambda h: f"POST /x HTTP/1.0\nhost: {h}\n\n".encode()),
    st.binary(max_size=300),
    st.just(b""),
)


def ours(spec: dict[str, Any], payload: bytes | None) -> tuple[int, bytes, str]:
    with tempfile.TemporaryDirectory() as d:
        if payload is not None:
            (Path(d) / "payload.bin").write_bytes(payload)
            spec = {**spec, "filepath": "payload.bin"}
        (Path(d) / "in.json").write_text(json.dumps(spec))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["pack", str(Path(d) / "in.json"), str(Path(d) / "out.bin")])
        out = (Path(d) / "out.bin").read_bytes() if code == 0 else b""
        return code, out, err.getvalue()


def reference_pack_js(node: str, env: dict[str, str], spec: dict[str, Any], payload: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "payload.bin").write_bytes(payload)
        (Path(d) / "in.json").write_text(json.dumps({**spec, "filepath": "payload.bin"}))
        subprocess.run(
            [node, str(PACK_JS), str(Path(d) / "in.json"), str(Path(d) / "out.bin")],
            env=env, check=True, capture_output=True, timeout=60,
        )
        return (Path(d) / "out.bin").read_bytes()


def _unsafe(frame: bytes, body_len: int) -> bool:
    """Does the reference's frame break M-PROXY framing (length wrapped, extra commas, non-ASCII)?"""
    header = frame[2:len(frame) - body_len]
    return len(header) > 255 or header.count(b",") != 6 or not header.isascii()


def test_reference_input_json(node_bin: str, packjs_env: dict[str, str], tmp_path: Path) -> None:
    src = PACK_JS.parent / "input.json"
    subprocess.run([node_bin, str(PACK_JS), str(src), str(tmp_path / "ref.bin")], env=packjs_env, check=True,
                   capture_output=True, timeout=60)
    assert main(["pack", str(src), str(tmp_path / "ours.bin")]) == 0
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    assert (tmp_path / "ours.bin").read_bytes() == (PACK_JS.parent / "output.bin").read_bytes()


@SETTINGS
@given(address=ADDRESS, payload=PAYLOAD)
def test_pack_matches_node_test_pack_js(
    node_bin: str, packjs_env: dict[str, str], address: dict[str, Any], payload: bytes
) -> None:
    spec = {"version": 1, "address": address}
    theirs = reference_pack_js(node_bin, packjs_env, spec, payload)
    code, mine, err = ours(spec, payload)
    if code == 0:
        assert mine == theirs
    else:
        assert code == 1 and err.count("\n") == 1, err
        assert any(r in err for r in ("contains a comma", "is not ASCII", "over the 255-byte limit")), err
        assert _unsafe(theirs, len(payload) or 1)


KIND = st.sampled_from(["connection", "control", "end", "error", "pause", "resume"])
JSON_BODY = (
    st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers() | st.none(), max_size=3)
    | st.fixed_dictionaries({"message": st.text(max_size=10), "code": ASCII})
)


@SETTINGS
@given(address=ADDRESS, kind=KIND, body=JSON_BODY, use_file=st.booleans(), payload=st.binary(max_size=50))
def test_pack_kinds_match_packer_pack(
    oracle: Any, address: dict[str, Any], kind: str, body: Any, use_file: bool, payload: bytes
) -> None:
    if use_file:
        code, mine, err = ours({"address": address, "kind": kind}, payload)
        data: dict[str, Any] = {"b64": base64.b64encode(payload).decode()}
    else:
        code, mine, err = ours({"address": address, "kind": kind, "json": body}, None)
        data = {"json": body}
    answer = oracle.ask({"op": "pack", "fn": "pack", "meta": address, "data": data, "service": kind})
    theirs = base64.b64decode(answer["b64"])
    if code == 0:
        assert mine == theirs
    else:
        assert code == 1 and err.count("\n") == 1, err
        assert any(r in err for r in ("contains a comma", "is not ASCII", "over the 255-byte limit")), err


FRAME_META = st.fixed_dictionaries(
    {"family": st.sampled_from(["IPv4", "IPv6"]), "address": ASCII, "port": st.integers(1, 65535).map(str),
     "service": st.sampled_from(["https", "tcp", "ssh"]), "serviceport": st.sampled_from(["", "443"]),
     "name": ASCII}
)


@SETTINGS
@given(
    frames=st.lists(
        st.tuples(FRAME_META, st.sampled_from([None, "connection", "end", "pause", "resume"]),
                  st.binary(max_size=100), st.sampled_from(["pack", "packHeader"])),
        min_size=1, max_size=5,
    )
)
def test_unpack_matches_reference_parser(oracle: Any, frames: list[tuple[Any, ...]]) -> None:
    stream = b"".join(oracle.pack(fn, dict(meta), body, kind) for meta, kind, body, fn in frames)
    theirs = oracle.parse([stream])
    assert theirs["error"] is None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "s.bin").write_bytes(stream)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["unpack", str(Path(d) / "s.bin")]) == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    keys = ("event", "family", "address", "port", "service", "serviceport", "name")
    assert [{k: x[k] for k in keys} | {"data": x["data"] or None} for x in lines] == [
        {k: e[k] for k in keys} | {"data": e["data"]} for e in theirs["events"]
    ]
