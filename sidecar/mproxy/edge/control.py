"""The edge's side of the telebit control channel, sans-IO: tokens in, grants and replies out.

A tunnel may present tokens in the WebSocket URL (`?access_token=`), in the Authorization header
(Bearer, or the password of Basic) and with `add_token` requests after the relay's `hello`; it may drop
them with `delete_token`. The tunnel's grant is the union of its live tokens; a token that expires
later drops out at the next `expire()` tick. Tokens are kept only as SHA-256 digests, never logged.
A token whose `listenerGroups` claim does not allow the listener groups the tunnel asked for at its
upgrade is refused (`listener_groups_not_allowed`). `scope` is where the tunnel serves: the groups it
asked for, else its tokens' allowed groups, else None (every listener).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from mproxy.codec import ControlMessageError, Hello, Notice, Reply, Request, parse_control
from mproxy.codec.control import (
    bad_command,
    error_reply,
    hello_message,
    reply,
    unknown_command,
)
from mproxy.codec.errors import ErrorCode
from mproxy.edge import jwt
from mproxy.edge.auth import Grant
from mproxy.edge.jwt import TokenError

MAX_TOKENS = 64  # per tunnel; more is a client bug or an attack
ADD_COMMANDS = ("add_token", "auth", "authn", "authz")


def tokens_from_request(query: str, authorization: str | None) -> list[str]:
    """Tokens a WebSocket upgrade carries: `access_token` query parameters and the Authorization header."""
    found: list[str] = []
    for value in parse_qs(query, keep_blank_values=False).get("access_token", []):
        found.append(value)
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        rest = rest.strip()
        if scheme.lower() == "bearer" and rest:
            found.append(rest)
        elif scheme.lower() == "basic" and rest:
            try:
                decoded = base64.b64decode(rest, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            _, sep, password = decoded.partition(":")
            if sep and password:
                found.append(password)
    return found


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Token:
    grant: Grant
    expires: float | None


@dataclass
class ControlResult:
    """What one control message asks the session to do."""

    replies: list[list[Any]] = field(default_factory=list)
    grant_changed: bool = False
    rejected: list[str] = field(default_factory=list)  # reasons of refused tokens (metric labels)
    close_reason: str | None = None


class EdgeControl:
    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time,
                 asked_groups: frozenset[str] | None = None) -> None:
        self._secret = secret
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self.hello_acked = False
        self.grant = Grant()
        self.asked_groups = asked_groups  # X-Mproxy-Listener-Groups at the upgrade (None: none asked)
        self.refusal = ""  # why the last token was refused, for the tunnel (no token in it)

    @property
    def scope(self) -> frozenset[str] | None:
        """The listener groups this tunnel serves on; None: every listener (it asked for none and no
        token limits it)."""
        return self.asked_groups if self.asked_groups is not None else self.grant.groups

    def has_grant(self) -> bool:
        return not self.grant.empty

    @staticmethod
    def hello() -> list[Any]:
        return hello_message()

    def add_token(self, token: str) -> str | None:
        """Verify and add one token; returns None if accepted, else the refusal reason label."""
        if len(self._tokens) >= MAX_TOKENS:
            self.refusal = f"too many tokens (at most {MAX_TOKENS} per tunnel)"
            return "too_many_tokens"
        try:
            claims = jwt.decode(token, self._secret, now=self._clock())
            grant = Grant.from_claims(claims)
        except TokenError as exc:
            self.refusal = exc.reason.replace("_", " ")
            return exc.reason
        if not grant.allows(self.asked_groups):
            asked = ", ".join(sorted(self.asked_groups or ()))
            allowed = ", ".join(sorted(grant.groups or ())) or "none"
            self.refusal = (f"listener groups not allowed: the tunnel asked for {asked}, the token allows "
                            f"only {allowed} (fix edge.listenerGroups or mint the token with "
                            "--listener-group)")
            return "listener_groups_not_allowed"
        exp = claims.get("exp")
        self._tokens[_digest(token)] = _Token(grant, float(exp) if exp is not None else None)
        self._recompute()
        return None

    def delete_token(self, token: str) -> bool:
        if token == "*":  # noqa: S105 - "*" means "every token", not a password
            found = bool(self._tokens)
            self._tokens.clear()
        else:
            found = self._tokens.pop(_digest(token), None) is not None
        self._recompute()
        return found

    def expire(self) -> bool:
        """Drop expired tokens; True when the grant changed."""
        now = self._clock()
        dead = [k for k, t in self._tokens.items() if t.expires is not None and now > t.expires]
        for key in dead:
            del self._tokens[key]
        return self._recompute() if dead else False

    def _recompute(self) -> bool:
        grant = Grant()
        for tok in self._tokens.values():
            grant = grant.union(tok.grant)
        changed = grant != self.grant
        self.grant = grant
        return changed

    def handle(self, value: object) -> ControlResult:
        """Handle one decoded control body (None when it was not JSON)."""
        out = ControlResult()
        try:
            msg = parse_control(value)
        except ControlMessageError as exc:
            out.replies.append(bad_command(str(exc)))
            return out
        before = self.grant
        if isinstance(msg, Reply):
            if msg.id == 1:
                self.hello_acked = True
            return out
        if isinstance(msg, Notice | Hello):
            # A device has no business greeting the relay; answer like any unknown command.
            if isinstance(msg, Hello):
                out.replies.append(
                    error_reply(msg.id, "the relay sends hello, not the device", ErrorCode.BAD_COMMAND)
                )
            return out
        assert isinstance(msg, Request)
        if msg.name in ADD_COMMANDS:
            token = msg.args[0] if msg.args else None
            if isinstance(token, Mapping):  # some clients send {"jwt": "..."}
                token = token.get("jwt") or token.get("token")
            if not isinstance(token, str) or not token:
                out.replies.append(error_reply(msg.id, f"{msg.name} needs a token argument",
                                               ErrorCode.BAD_COMMAND))
                out.rejected.append("malformed")
                return out
            reason = self.add_token(token)
            if reason is None:
                out.replies.append(reply(msg.id))
            else:
                out.rejected.append(reason)
                out.replies.append(error_reply(msg.id, f"token refused: {self.refusal}", ErrorCode.AUTH))
        elif msg.name == "delete_token":
            token = msg.args[0] if msg.args else None
            if not isinstance(token, str) or not token:
                out.replies.append(error_reply(msg.id, "delete_token needs a token argument or '*'",
                                               ErrorCode.BAD_COMMAND))
                return out
            self.delete_token(token)
            out.replies.append(reply(msg.id))
        else:
            out.replies.append(unknown_command(msg))
        out.grant_changed = self.grant != before
        return out
