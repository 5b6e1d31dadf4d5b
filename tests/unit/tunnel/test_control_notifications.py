"""Unsolicited relay messages (telebit-relay's `grant`, `access_token`) are notifications: handled, never
answered (telebit's device never replies to them; an answer makes the relay log "received response to
unknown command" on every connect)."""

from __future__ import annotations

from typing import Any

from mproxy.codec import Request
from mproxy.tunnel import ControlChannel


def test_a_notification_is_handled_and_never_answered() -> None:
    sent: list[Any] = []
    seen: list[Request] = []
    channel = ControlChannel(sent.append)
    channel.notifications["grant"] = seen.append
    channel.feed([2, "grant", {"domains": ["a.test"]}])
    assert [r.name for r in seen] == ["grant"] and sent == []


def test_a_failing_notification_is_not_answered_either() -> None:
    sent: list[Any] = []
    channel = ControlChannel(sent.append)

    def broken(_: Request) -> None:
        raise ValueError("bad grant")

    channel.notifications["access_token"] = broken
    channel.feed([3, "access_token", "x"])
    assert sent == []


def test_other_commands_are_still_answered() -> None:
    sent: list[Any] = []
    channel = ControlChannel(sent.append)
    channel.notifications["grant"] = lambda req: None
    channel.handlers["ping"] = lambda req: None
    channel.feed([4, "ping"])
    channel.feed([5, "nope"])
    assert sent[0] == [-4, None] and sent[1][0] == -5 and sent[1][1]["code"] == "E_UNKNOWN_COMMAND"
