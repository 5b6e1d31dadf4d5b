"""Playbooks for the multiplexer (mitmproxy's style): events in, frames and handler calls out, no WebSocket.

    assert (
        Playbook()
        >> connection(A, "https")   # the peer's frame, fed to mux.feed()
        << accepted(A, "https")     # what the role's accept() saw
        >> write(A, b"hi")          # a local action on A's stream
        << data(A, b"hi", "https")  # the exact frame next_batch() produced
    )

`>>` adds an input step: a codec Event (packed with pack_event and fed to the mux as the peer's bytes) or a
local action (write, write_eof, abort, pause_reading, resume_reading, open_stream, tick, sweep, drain;
`together(...)` runs several in one step).
`<<` adds what must come out next: a frame (an Event, compared after a pack/parse round trip so defaults
match what the wire carries) or a handler call (`Call`). `bool(playbook)` runs the steps on a Multiplexer
with a fake clock, draining next_batch() after each, and fails with the whole transcript, expected against
actual, at every difference; nothing may be left over at the end. Output is in the order a role sees it:
a batch's frames after the callbacks made while it was packed (a stream closes as its last `end` is taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mproxy.codec import Address, Connection, End, Error, Event, Message, Pause, Resume, pack_event, parse_all
from mproxy.tunnel import Multiplexer, MuxLimits, Stream, StreamEnd, StreamHandler

A = Address("IPv4", "203.0.113.7", "50001")
B = Address("IPv4", "203.0.113.7", "50002")  # same client address as A, another port
C = Address("IPv6", "2001:db8::1", "40000")


class Clock:
    """A fake monotonic clock the multiplexer reads for activity and idle times."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Call:
    """A handler callback the multiplexer made: `what` on the stream of `client`."""

    what: str
    client: str
    args: tuple[object, ...] = ()

    def __repr__(self) -> str:
        return f"call {self.what}({self.client}{''.join(f', {a!r}' for a in self.args)})"


@dataclass(frozen=True)
class Action:
    """A local step: `run(playbook)` does something to the mux or one of its streams."""

    label: str
    run: Callable[[Playbook], None]

    def __repr__(self) -> str:
        return self.label


class _Recorder(StreamHandler):
    def __init__(self, log: list[object], client: str) -> None:
        self.log, self.client = log, client

    def data_received(self, data: bytes) -> None:
        self.log.append(Call("data_received", self.client, (bytes(data),)))

    def eof_received(self) -> None:
        self.log.append(Call("eof_received", self.client))

    def error_received(self, message: str, code: str) -> None:
        self.log.append(Call("error_received", self.client, (message, code)))

    def pause_writing(self) -> None:
        self.log.append(Call("pause_writing", self.client))

    def resume_writing(self) -> None:
        self.log.append(Call("resume_writing", self.client))

    def stream_closed(self, end: StreamEnd) -> None:
        self.log.append(Call("stream_closed", self.client, (end,)))


def _wire(event: Event) -> Event:
    (back,) = parse_all(pack_event(event))
    return back


@dataclass
class Playbook:
    limits: MuxLimits = field(default_factory=MuxLimits)
    accept: bool = True  # a sidecar (accepts streams); False: this peer opens them only
    implicit_open: bool = False
    clock: Clock = field(default_factory=Clock)
    steps: list[tuple[str, object]] = field(default_factory=list)
    streams: dict[str, Stream] = field(default_factory=dict)
    mux: Multiplexer | None = None
    _log: list[object] = field(default_factory=list)

    def __rshift__(self, step: Event | Action) -> Playbook:
        self.steps.append((">>", step))
        return self

    def __lshift__(self, out: Event | Call) -> Playbook:
        self.steps.append(("<<", _wire(out) if isinstance(out, Event) else out))
        return self

    def stream(self, addr: Address) -> Stream:
        return self.streams[addr.client_id]

    def recorder(self, client: str) -> StreamHandler:
        return _Recorder(self._log, client)

    def __bool__(self) -> bool:
        log = self._log

        def on_stream(stream: Stream) -> StreamHandler:
            self.streams[stream.client_id] = stream
            log.append(Call("accepted", stream.client_id, (stream.service,)))
            return self.recorder(stream.client_id)

        self.mux = mux = Multiplexer(on_stream=on_stream if self.accept else None, limits=self.limits,
                                     implicit_open=self.implicit_open, name="playbook", clock=self.clock)
        actual: list[tuple[str, object]] = []
        for kind, step in self.steps:
            if kind == "<<":
                continue
            actual.append((">>", step))
            if isinstance(step, Event):
                mux.feed(pack_event(step))
            else:
                assert isinstance(step, Action)
                step.run(self)
            while mux.has_pending_output():
                log += parse_all(b"".join(mux.next_batch()))
            actual += [("<<", out) for out in log]
            log.clear()
        if actual != self.steps:
            lines = [f"{'ok' if i < len(actual) and actual[i] == s else 'XX'} expected {s[0]} {s[1]!r}\n"
                     f"   actual   {actual[i][0] + ' ' + repr(actual[i][1]) if i < len(actual) else '-'}"
                     for i, s in enumerate(self.steps)]
            lines += [f"XX unexpected {k} {v!r}" for k, v in actual[len(self.steps):]]
            raise AssertionError("the playbook differs:\n" + "\n".join(lines))
        return True


# -- frames (what the peer sends or what we expect to send) ----------------------------------------------

def _at(addr: Address) -> dict[str, Any]:
    return {"family": addr.family, "address": addr.address, "port": addr.port}


def connection(addr: Address, service: str, serviceport: str = "", name: str = "") -> Connection:
    return Connection(**_at(addr), servicename=service, service=service, serviceport=serviceport, name=name)


def data(
    addr: Address, payload: bytes, service: str = "tcp", serviceport: str = "", name: str = ""
) -> Message:
    return Message(**_at(addr), service=service, serviceport=serviceport, name=name, data=payload)


def end(addr: Address, serviceport: str = "", name: str = "") -> End:
    return End(**_at(addr), serviceport=serviceport, name=name)


def error(addr: Address, message: str, code: str, serviceport: str = "", name: str = "") -> Error:
    return Error(**_at(addr), message=message, code=code, serviceport=serviceport, name=name)


def pause(addr: Address, count: int = 0, serviceport: str = "", name: str = "") -> Pause:
    return Pause(**_at(addr), data=b"%d" % count, serviceport=serviceport, name=name)


def resume(addr: Address, count: int = 0, serviceport: str = "", name: str = "") -> Resume:
    return Resume(**_at(addr), data=b"%d" % count, serviceport=serviceport, name=name)


# -- handler calls -----------------------------------------------------------------------------------------

def accepted(addr: Address, service: str) -> Call:
    return Call("accepted", addr.client_id, (service,))


def got(what: str, addr: Address, *args: object) -> Call:
    """`what` is a StreamHandler callback name: data_received, eof_received, error_received,
    pause_writing, resume_writing, stream_closed."""
    return Call(what, addr.client_id, args)


# -- local actions -----------------------------------------------------------------------------------------

def open_stream(addr: Address, service: str, serviceport: str = "", name: str = "") -> Action:
    def run(pb: Playbook) -> None:
        assert pb.mux is not None
        pb.streams[addr.client_id] = pb.mux.open_stream(addr, pb.recorder(addr.client_id), service=service,
                                                        serviceport=serviceport, name=name)
    return Action(f"open_stream({addr.client_id}, {service!r})", run)


def on(addr: Address, method: str, *args: object) -> Action:
    """Call Stream.`method`(*args) on addr's stream: write, write_eof, abort, pause_reading, ..."""
    return Action(f"{method}({addr.client_id}{''.join(f', {a!r}' for a in args)})",
                  lambda pb: getattr(pb.stream(addr), method)(*args))


def write(addr: Address, payload: bytes) -> Action:
    return on(addr, "write", payload)


def together(*actions: Action) -> Action:
    """Several local actions in one step (no batch is taken between them)."""
    def run(pb: Playbook) -> None:
        for action in actions:
            action.run(pb)
    return Action(" + ".join(a.label for a in actions), run)


def tick(seconds: float) -> Action:
    def run(pb: Playbook) -> None:
        pb.clock.now += seconds
    return Action(f"tick({seconds})", run)


def sweep() -> Action:
    def run(pb: Playbook) -> None:
        assert pb.mux is not None
        pb.mux.sweep_idle()
    return Action("sweep_idle()", run)


def drain() -> Action:
    def run(pb: Playbook) -> None:
        assert pb.mux is not None
        pb.mux.draining = True
    return Action("draining = True", run)
