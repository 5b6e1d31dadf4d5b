"""`mproxy pack` and `mproxy unpack`: the reference's test/pack.js contract and clean failures."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mproxy.cli import main
from mproxy.codec import Address, pack_data, pack_end

VECTORS = Path(__file__).parent / "vectors"
HELLO = (VECTORS / "sni.hello.bin").read_bytes()


def run(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """`python -m mproxy ...` in a real process: proves the exit status and that no traceback escapes."""
    proc = subprocess.run(
        [sys.executable, "-m", "mproxy", *argv], input=stdin, capture_output=True, timeout=60, check=False
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def inproc(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_pack_reference_input_gives_reference_output(tmp_path: Path) -> None:
    code, _, err = inproc("pack", str(VECTORS / "packjs-input.json"), str(tmp_path / "out.bin"))
    assert code == 0, err
    assert (tmp_path / "out.bin").read_bytes() == (VECTORS / "output.bin").read_bytes()


def _spec(tmp_path: Path, spec: dict[str, Any], payload: bytes | None = None) -> str:
    if payload is not None:
        (tmp_path / "payload.bin").write_bytes(payload)
        spec = {**spec, "filepath": "payload.bin"}
    (tmp_path / "in.json").write_text(json.dumps(spec))
    return str(tmp_path / "in.json")


ADDR = {"family": "IPv4", "address": "10.0.0.2", "port": 5555, "service": "http", "serviceport": 80}


@pytest.mark.parametrize(
    ("spec", "payload", "expected"),
    [
        ({"address": ADDR}, b"GET / HTTP/1.1\r\nHost: WWW.Example.com:8080\r\n\r\n",
         b"IPv4,10.0.0.2,5555,46,http,80,www.example.com"),
        ({"address": {**ADDR, "name": "ignored.example"}}, b"\x00\x01", b"IPv4,10.0.0.2,5555,2,http,80,"),
        ({"address": ADDR}, b"", b"IPv4,10.0.0.2,5555,1,http,80,"),
        ({"address": ADDR, "kind": "end"}, None, b"IPv4,10.0.0.2,5555,1,end,80,"),
        ({"address": {**ADDR, "name": "a.io"}, "kind": "connection", "json": None}, None,
         b"IPv4,10.0.0.2,5555,1,connection,80,a.io,http"),
        ({"kind": "control", "json": [-1, None]}, None, b",,,9,control"),
        ({"address": ADDR, "kind": "error", "json": {"message": "m", "code": "E_X"}}, None,
         b"IPv4,10.0.0.2,5555,28,error,80,"),
        ({"address": ADDR, "kind": "pause", "json": 1048576}, None, b"IPv4,10.0.0.2,5555,7,pause,80,"),
    ],
)
def test_pack_kinds(tmp_path: Path, spec: dict[str, Any], payload: bytes | None, expected: bytes) -> None:
    src = _spec(tmp_path, spec, payload)
    code, _, err = inproc("pack", src, str(tmp_path / "out.bin"))
    assert code == 0, err
    out = (tmp_path / "out.bin").read_bytes()
    assert out[:2] == bytes([0xFE, len(expected)]) and out[2:2 + len(expected)] == expected


@pytest.mark.parametrize(
    ("spec", "payload", "message"),
    [
        ({"address": {**ADDR, "address": "1,2"}}, b"x", "field address='1,2' contains a comma"),
        ({"address": ADDR}, b"GET / HTTP/1.1\r\nHost: " + b"h" * 300 + b"\r\n\r\n", "over the 255-byte"),
        ({"address": ADDR}, b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", "field name='a' contains a comma"),
        ({"address": ADDR, "kind": "frob"}, b"x", "kind 'frob' is not one of"),
        ({"address": ADDR}, None, "no \"filepath\""),
        ({"address": ADDR, "filepath": "missing.bin"}, None, "No such file"),
        ({"version": 2, "address": ADDR}, b"x", "version 2 is not supported"),
        ({"filepath": "x"}, b"x", "no \"address\""),
    ],
)
def test_pack_failures_are_one_line(tmp_path: Path, spec: dict[str, Any], payload: bytes | None,
                                    message: str) -> None:
    code, _, err = inproc("pack", _spec(tmp_path, spec, payload), str(tmp_path / "out.bin"))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("mproxy pack: ")
    assert message in err or message.replace("'a'", "'a,b'") in err
    assert not (tmp_path / "out.bin").exists()


def test_pack_bad_json_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text("{not json")
    code, out, err = run("pack", str(tmp_path / "in.json"), str(tmp_path / "o.bin"))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err and "Expecting property name" in err


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_unpack_reference_stream(tmp_path: Path) -> None:
    code, out, err = inproc("unpack", str(VECTORS / "parse-js-stream.bin"))
    assert (code, err) == (0, "")
    lines = _lines(out)
    assert [x["event"] for x in lines] == ["connection", "message", "end"]
    assert lines[0]["service"] == "foo-https" and lines[0]["data"] == ""
    assert base64.b64decode(lines[1]["data"]) == HELLO
    assert {k: lines[1][k] for k in ("family", "address", "port", "service", "serviceport", "name")} == {
        "family": "IPv4", "address": "127.0.1.1", "port": "4321", "service": "foo-https",
        "serviceport": "443", "name": "foo-pokemap.hellabit.com",
    }


def test_unpack_malformed_prints_earlier_messages_then_fails(tmp_path: Path) -> None:
    a = Address("IPv4", "1.2.3.4", "5")
    good = pack_data(a, b"one", service="tcp") + pack_end(a)
    (tmp_path / "bad.bin").write_bytes(good + b"\xfe\x00rest")
    code, out, err = run("unpack", str(tmp_path / "bad.bin"))
    assert code == 1
    assert [x["event"] for x in _lines(out)] == ["message", "end"]
    assert err == f"mproxy unpack: byte {len(good) + 1}: header length 0 is invalid " \
                  "(a header holds at least family,address,port,datalen)\n"


def test_unpack_truncated_stdin() -> None:
    code, out, err = run("unpack", "-", stdin=(VECTORS / "output.bin").read_bytes()[:-1])
    assert (code, out) == (1, "")
    assert err.startswith("mproxy unpack: byte 254: stream ended inside a frame body")
    assert err.count("\n") == 1


def test_unpack_missing_file_and_body_limit(tmp_path: Path) -> None:
    code, _, err = inproc("unpack", str(tmp_path / "nope.bin"))
    assert code == 1 and err.startswith("mproxy unpack: cannot read") and err.count("\n") == 1
    code, _, err = inproc("unpack", "--max-body", "100", str(VECTORS / "output.bin"))
    assert code == 1 and "199 is over the 100-byte body limit" in err


def test_unpack_large_stream_across_read_chunks(tmp_path: Path) -> None:
    a = Address("IPv6", "::1", "9")
    body = bytes(range(256)) * 700  # 179200 bytes: spans several 64 KiB reads
    (tmp_path / "big.bin").write_bytes(pack_data(a, body, service="tcp") * 3)
    code, out, _ = inproc("unpack", str(tmp_path / "big.bin"))
    assert code == 0
    assert [base64.b64decode(x["data"]) for x in _lines(out)] == [body] * 3


def test_unpack_output_is_ascii_and_max_body_is_checked(tmp_path: Path) -> None:
    from mproxy.codec import pack_error

    (tmp_path / "e.bin").write_bytes(pack_error(Address("IPv4", "1.2.3.4", "5"), "é café", "E_X"))
    code, out, _ = inproc("unpack", str(tmp_path / "e.bin"))
    assert code == 0 and out.isascii() and _lines(out)[0]["message"] == "é café"
    code, _, err = inproc("unpack", "--max-body", "-1", str(tmp_path / "e.bin"))
    assert code == 2 and "--max-body must be 0 or more" in err
