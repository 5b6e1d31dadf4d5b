"""The edge control channel: telebit handshake, add_token/delete_token, token sources, expiry."""

from __future__ import annotations

import base64

from mproxy.edge.auth import mint
from mproxy.edge.control import EdgeControl, tokens_from_request

SECRET = b"edge-secret"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hello_is_the_reference_greeting() -> None:
    assert EdgeControl.hello() == [1, "hello", [1], ["add_token", "delete_token", "auth", "authn", "authz"]]


def test_add_and_delete_token() -> None:
    ctl = EdgeControl(SECRET)
    assert ctl.handle([-1, None]).replies == [] and ctl.hello_acked
    token = mint(SECRET, domains=["a.test"], ports=[7000])
    res = ctl.handle([42, "add_token", token])
    assert res.replies == [[-42, None]] and res.grant_changed
    assert ctl.grant.domains == {"a.test"} and ctl.grant.ports == {7000}
    other = mint(SECRET, domains=["b.test"])
    ctl.handle([43, "add_token", other])
    assert ctl.grant.domains == {"a.test", "b.test"}
    res = ctl.handle([44, "delete_token", token])
    assert res.replies == [[-44, None]] and res.grant_changed
    assert ctl.grant.domains == {"b.test"}
    ctl.handle([45, "delete_token", "*"])
    assert ctl.grant.empty


def test_refused_tokens_answer_with_an_error_and_grant_nothing() -> None:
    ctl = EdgeControl(SECRET)
    bad = mint(b"wrong secret", domains=["victim.test"])
    res = ctl.handle([7, "add_token", bad])
    assert res.replies[0][0] == -7 and res.replies[0][1]["code"] == "E_AUTH"
    assert res.rejected == ["bad_signature"] and ctl.grant.empty
    assert bad not in repr(res.replies)
    res = ctl.handle([8, "add_token"])
    assert res.replies[0][1]["code"] == "E_BAD_COMMAND"


def test_unknown_and_malformed_commands() -> None:
    ctl = EdgeControl(SECRET)
    assert ctl.handle([9, "frobnicate"]).replies == [
        [-9, {"message": "unknown command 'frobnicate'", "code": "E_UNKNOWN_COMMAND"}]
    ]
    junk: object
    for junk in (None, {}, [], ["x"], [1.5, "y"]):
        res = ctl.handle(junk)
        assert res.replies[0][0] == 0 and res.replies[0][1]["code"] == "E_BAD_COMMAND"


def test_expiry_drops_the_grant() -> None:
    clock = Clock()
    ctl = EdgeControl(SECRET, clock=clock)
    assert ctl.add_token(mint(SECRET, domains=["a.test"], ttl=10, now=clock.now)) is None
    assert not ctl.expire()
    clock.now += 11
    assert ctl.expire() and ctl.grant.empty
    assert ctl.add_token(mint(SECRET, domains=["a.test"], ttl=10, now=900)) == "expired"


def test_tokens_from_request() -> None:
    basic = base64.b64encode(b"user:tok3").decode()
    assert tokens_from_request("access_token=tok1&versions=v1", "Bearer tok2") == ["tok1", "tok2"]
    assert tokens_from_request("", f"Basic {basic}") == ["tok3"]
    assert tokens_from_request("", "Basic !!!") == []
    assert tokens_from_request("", None) == []
