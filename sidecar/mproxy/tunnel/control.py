"""The control channel of one tunnel (telebit grammar): requests with ids, replies, notices, hello.

Role-neutral: a role registers command handlers (`handlers["add_token"] = fn`) and/or `on_hello`, and
calls `request(name, *args)` to send a command and await its reply. Bad shapes are answered with an
E_BAD_COMMAND notice, unknown commands with E_UNKNOWN_COMMAND (quoting at most 64 characters of the name);
nothing here closes the tunnel.

`notifications["grant"] = fn` marks a command the peer sends unsolicited and expects no answer to:
telebit-relay sends `[id, "grant", ...]` and `[id, "access_token", ...]` after a token is accepted, its
device never replies, and an answer makes the relay log "received response to unknown command" on every
connect. `fn` is called; nothing is sent back, not even when it raises.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from mproxy.codec import (
    ControlMessageError,
    Hello,
    Notice,
    Reply,
    Request,
    error_reply,
    notice,
    parse_control,
    reply,
)
from mproxy.codec.control import unknown_command
from mproxy.codec.errors import ErrorCode

__all__ = ["CommandError", "ControlChannel"]

log = logging.getLogger("mproxy.tunnel.control")


class CommandError(Exception):
    """Raised by a command handler: answered as [-id, {message, code}]; or a failed request's reply."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(f"{code}: {message}")
        self.message = message
        self.code = code


Handler = Callable[[Request], Any]


class ControlChannel:
    def __init__(
        self, send: Callable[[object], None], *, timeout: float = 10.0, name: str = "tunnel"
    ) -> None:
        self._send = send
        self.timeout = timeout
        self.name = name
        self.handlers: dict[str, Handler] = {}
        self.notifications: dict[str, Callable[[Request], None]] = {}
        self.on_hello: Callable[[Hello], None] | None = None
        self.on_notice: Callable[[Notice], None] | None = None
        self._ids = itertools.count(2)  # the relay's hello uses id 1
        self._pending: dict[int, asyncio.Future[Reply]] = {}

    def feed(self, value: object) -> None:
        """A decoded control body from the peer."""
        try:
            msg = parse_control(value)
        except ControlMessageError as exc:
            log.warning("bad control message from the peer: %s", exc.reason, extra={"tunnel": self.name})
            self._send(notice(exc.reason, ErrorCode.BAD_COMMAND))
            return
        if isinstance(msg, Hello):
            if self.on_hello is not None:
                self.on_hello(msg)
            else:
                self._send(reply(msg.id))
        elif isinstance(msg, Reply):
            fut = self._pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, Notice):
            if self.on_notice is not None:
                self.on_notice(msg)
            else:
                log.warning("peer reported an error: %s", _brief(msg.error), extra={"tunnel": self.name})
        else:
            self._request(msg)

    def _request(self, req: Request) -> None:
        note = self.notifications.get(req.name)
        if note is not None:
            try:
                note(req)
            except Exception as exc:  # never answered, so never an error reply either
                log.warning("handling %s from the peer failed: %s: %s", req.name, type(exc).__name__, exc,
                            extra={"tunnel": self.name})
            return
        handler = self.handlers.get(req.name)
        if handler is None:
            self._send(unknown_command(req))
            return
        try:
            result = handler(req)
        except CommandError as exc:
            self._send(error_reply(req.id, exc.message, exc.code))
            return
        self._send(reply(req.id) if result is None else reply(req.id, result))

    async def request(self, name: str, *args: Any) -> Reply:
        """Send [id, name, *args] and wait for the reply; CommandError on E_TIMEOUT / E_CONN_CLOSED."""
        req_id = next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        self._send([req_id, name, *args])
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise CommandError(f"no reply to {name!r} within {self.timeout:g} s", ErrorCode.TIMEOUT) from None
        finally:
            self._pending.pop(req_id, None)

    def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CommandError("the tunnel closed", ErrorCode.CONN_CLOSED))
        self._pending.clear()


def _brief(err: object) -> str:
    if isinstance(err, dict):
        return f"{err.get('code', '?')}: {err.get('message', '')}"
    return repr(err)[:200]
