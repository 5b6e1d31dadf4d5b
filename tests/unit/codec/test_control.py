"""Control channel grammar: the telebit message shapes and clear errors for anything else."""

from __future__ import annotations

import pytest

from mproxy.codec import (
    ControlMessageError,
    Hello,
    Notice,
    Reply,
    Request,
    hello_message,
    js_stringify,
    parse_control,
)
from mproxy.codec import control as c
from mproxy.codec.errors import ErrorCode


def test_hello_is_the_reference_relay_greeting() -> None:
    msg = hello_message()
    assert js_stringify(msg) == '[1,"hello",[1],["add_token","delete_token","auth","authn","authz"]]'
    assert parse_control(msg) == Hello(1, (1,), ("add_token", "delete_token", "auth", "authn", "authz"))


def test_shapes() -> None:
    assert parse_control([7, "add_token", "jwt"]) == Request(7, "add_token", ("jwt",))
    grant = [["https", "example.com"]]
    assert parse_control([2, "grant", grant]) == Request(2, "grant", (grant,))
    assert parse_control([-1, None]) == Reply(1, None)
    ok = parse_control([-1, None])
    assert isinstance(ok, Reply) and ok.ok
    assert parse_control([-7, {}]) == Reply(7, {})
    refused = parse_control([-7, {}])
    assert isinstance(refused, Reply) and not refused.ok
    assert parse_control([-3, None, {"jwt": "x"}]) == Reply(3, None, {"jwt": "x"})
    assert parse_control([0, "[Error] out-of-band"]) == Notice("[Error] out-of-band")
    assert parse_control([3.0, "x"]) == Request(3, "x", ())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({}, "non-empty JSON array"),
        ([], "non-empty JSON array"),
        (["1", "x"], "id must be an integer"),
        ([True, "x"], "id must be an integer"),
        ([1], "no command name"),
        ([1, 5], "no command name"),
        ([1, "hello", "1"], "versions"),
        ([1, "hello", [1], [2]], "capabilities"),
        ([-1, None, 1, 2], "expected [-id, err, result?]"),
        ([0], "must be [0, err]"),
    ],
)
def test_bad_shapes(value: object, reason: str) -> None:
    with pytest.raises(ControlMessageError) as info:
        parse_control(value)
    assert reason in info.value.reason


def test_builders() -> None:
    assert c.reply(5) == [-5, None]
    assert c.reply(5, {"a": 1}) == [-5, None, {"a": 1}]
    assert c.error_reply(5, "unknown command 'x'", ErrorCode.UNKNOWN_COMMAND) == [
        -5, {"message": "unknown command 'x'", "code": ErrorCode.UNKNOWN_COMMAND}
    ]
    assert c.notice("bad", ErrorCode.BAD_COMMAND) == [0, {"message": "bad", "code": ErrorCode.BAD_COMMAND}]
    assert c.hello_ack() == [-1, None]
    assert c.request(9, "add_token", "jwt") == [9, "add_token", "jwt"]
    assert c.unknown_command(Request(4, "frob", ()))[1]["code"] == ErrorCode.UNKNOWN_COMMAND
    assert c.bad_command("not an array")[0] == 0
    with pytest.raises(ValueError):
        c.request(0, "x")
