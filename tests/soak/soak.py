"""The soak (`scripts/soak`): a real edge and two sidecars (two tunnel connections each) under load for
`--minutes` (10 by default), with a hostile tunnel and slowloris clients alongside.

- honest load: `--streams` concurrent client streams (2000 by default) from 40 loopback addresses, each
  opening, echoing 1-128 KiB of random bytes through edge -> sidecar -> backend, checking sha256, closing,
  and starting again (the streams and slowloris start evenly over `--ramp-seconds`, 10 by default);
- a hostile tunnel: 3 WebSocket peers at once that dial the edge with bad or missing tokens and bad
  M-PROXY input (one case per connection, round robin; their token grants a port no listener serves,
  so no honest client is ever routed to them);
- slowloris: `--slowloris` connections (100) that trickle one byte a second into the HTTP and TLS
  listeners and never finish the request head or ClientHello.

Once a minute: RSS (MiB), fds and threads of each role, streams done, bytes verified. At the end: zero
corrupted bytes and zero failed honest streams, fds back to the baseline once the load stopped, RSS flat
(the last minute within 20% or 24 MiB of minute 2's). Exit status 0 only when all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "sidecar")]

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from tests.e2e.faults.harness import (  # noqa: E402
    BACKEND_PY,
    PUBLIC_PORT,
    Proc,
    Transfer,
    fds,
    get_json,
    get_text,
    mproxy_argv,
    rss_kib,
    threads,
)
from tests.ports import free_port  # noqa: E402

from mproxy.codec.address import Address  # noqa: E402
from mproxy.codec.packer import pack_control, pack_data, pack_raw_header  # noqa: E402
from mproxy.edge.auth import mint  # noqa: E402

SECRET = b"soak-secret-0123456789abcdef0123"
HOSTILE_PORT = 7999  # granted to the hostile tunnel; no listener has it
CLIENT_ADDRS = [f"127.0.0.{i}" for i in range(2, 42)]
SNIFF_TIMEOUT = 5.0
CONTROL_FIELDS = ("family", "address", "port", "datalen", "service")


@dataclass
class Stats:
    streams: int = 0
    failed: int = 0
    corrupted: int = 0
    bytes_verified: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_unexpected: Counter[str] = field(default_factory=Counter)
    slowloris_cut: int = 0
    slowloris_longest: float = 0.0
    slowloris_overdue: int = 0  # held past the sniff timeout + 3 s


# -- the system -------------------------------------------------------------------------------------

class System:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "secret").write_bytes(SECRET)
        (tmp / "token").write_text(mint(SECRET, ports=[PUBLIC_PORT]))
        self.tcp, self.http, self.tls = free_port(), free_port(), free_port()
        self.tunnel, self.edge_http = free_port(), free_port()
        edge = {
            "auth": {"secretFile": str(tmp / "secret")},
            "listeners": [
                {"kind": "tcp", "listen": f"127.0.0.1:{self.tcp}", "publicPort": PUBLIC_PORT},
                {"kind": "http", "listen": f"127.0.0.1:{self.http}"},
                {"kind": "tls", "listen": f"127.0.0.1:{self.tls}"},
            ],
            "tunnel": {"listen": f"127.0.0.1:{self.tunnel}", "path": "/tunnel"},
            "http": {"listen": f"127.0.0.1:{self.edge_http}"},
            "limits": {"maxStreamsPerTunnel": 4000, "maxStreamsPerClient": 400, "connectionRate": 2000,
                       "connectionBurst": 4000, "sniffTimeoutSeconds": SNIFF_TIMEOUT},
            "heartbeat": {"intervalSeconds": 5, "timeoutSeconds": 15, "authTimeoutSeconds": 2},
            "logging": {"format": "text", "level": "warning"},
            "drainSeconds": 5,
        }
        (tmp / "edge.yaml").write_text(yaml.safe_dump(edge))
        self.edge = Proc("edge", mproxy_argv("edge", tmp / "edge.yaml"), tmp / "edge.log",
                         "mproxy edge ready")
        self.backends: list[Proc] = []
        self.sidecars: list[Proc] = []
        self.sidecar_http: list[int] = []
        for label in ("A", "B"):
            port, http = free_port(), free_port()
            self.backends.append(Proc(f"backend {label}", [sys.executable, str(BACKEND_PY), str(port), label,
                                                           "echo"], tmp / f"backend-{label}.log", "ready"))
            cfg = {
                "edge": {"urls": [f"ws://127.0.0.1:{self.tunnel}/tunnel"], "connectionsPerUrl": 2,
                         "tokenFile": str(tmp / "token")},
                "routes": [{"name": "echo", "match": {"services": ["tcp"]},
                            "backend": {"host": "127.0.0.1", "port": port}}],
                "limits": {"maxStreamsPerTunnel": 4000, "maxStreamsPerClient": 1000},
                "heartbeat": {"intervalSeconds": 5, "timeoutSeconds": 15},
                "http": {"listen": f"127.0.0.1:{http}"},
                "logging": {"format": "text", "level": "warning"},
                "drainSeconds": 5,
            }
            (tmp / f"sidecar-{label}.yaml").write_text(yaml.safe_dump(cfg))
            argv = mproxy_argv("sidecar", tmp / f"sidecar-{label}.yaml")
            self.sidecars.append(Proc(f"sidecar {label}", argv, tmp / f"sidecar-{label}.log", ""))
            self.sidecar_http.append(http)

    @property
    def procs(self) -> list[Proc]:
        return [self.edge, *self.sidecars, *self.backends]

    async def start(self) -> None:
        await asyncio.gather(self.edge.start(), *(b.start() for b in self.backends))
        for proc in self.sidecars:
            with proc.log.open("ab") as err:
                proc.proc = await asyncio.create_subprocess_exec(
                    *proc.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=err)
        deadline = time.monotonic() + 60
        while (await self.tunnels()) < 4:
            for proc in self.procs:
                if not proc.alive:
                    raise SystemExit(f"{proc.name} exited during start-up:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the 4 tunnels did not come up in 60 s:\n{self.edge.tail()}")
            await asyncio.sleep(0.2)

    async def tunnels(self) -> int:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            return int((await get_json(self.edge_http))["ports"].get(str(PUBLIC_PORT), 0))
        return 0

    async def refusals(self) -> dict[str, float]:
        """Every refusal and error counter of the three mproxy processes that is not zero, summed over
        its other labels: what the roles say went wrong."""
        wanted = ("mproxy_edge_rejects_total", "mproxy_edge_tunnel_rejects_total",
                  "mproxy_edge_client_connections_total", "mproxy_sidecar_stream_errors_total",
                  "mproxy_sidecar_streams_refused_total", "mproxy_sidecar_tunnel_reconnects_total")
        out: dict[str, float] = {}
        for port in (self.edge_http, *self.sidecar_http):
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                text = await get_text(port, "/metrics")
                for metric in text.splitlines():
                    name = metric.split("{", 1)[0]
                    if name in wanted and not metric.startswith("#"):
                        labels = metric[len(name):].rsplit(" ", 1)[0]
                        keep = ",".join(part for part in labels.strip("{}").split(",")
                                        if part.split("=")[0] in ("reason", "result"))
                        if 'result="ok"' not in keep:
                            key = f"{name}{{{keep}}}"
                            out[key] = out.get(key, 0.0) + float(metric.rsplit(" ", 1)[1])
        return {k: v for k, v in out.items() if v}

    def sample(self) -> dict[str, dict[str, int]]:
        return {p.name: {"rss_mib": rss_kib(p.pid) >> 10, "fds": fds(p.pid), "threads": threads(p.pid)}
                for p in self.procs if p.alive}

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()


# -- load -------------------------------------------------------------------------------------------

async def honest(system: System, stats: Stats, stop: asyncio.Event, n: int, delay: float) -> None:
    await asyncio.sleep(delay)  # the ramp: a soak measures the steady state, not one SYN burst
    rng = random.Random(n)
    local = CLIENT_ADDRS[n % len(CLIENT_ADDRS)]
    while not stop.is_set():
        t = Transfer(size=rng.randint(1 << 10, 128 << 10), chunk=16 << 10, pace=0.0)
        await t.run(system.tcp, timeout=60, local_addr=(local, 0))
        stats.streams += 1
        if t.intact:
            stats.bytes_verified += t.size
        elif not t.uncorrupted:
            stats.corrupted += 1
            stats.failed += 1
            stats.failures["corrupted"] += 1
        else:
            stats.failed += 1
            stats.failures[t.error or "cut short"] += 1


HOSTILE_EXPECTED = {  # what the edge may do with each input; anything else is a finding
    "bad token (401)": {"HTTP 401"},
    "data for an unknown client": {"answered E_NO_CONN"},
    "unknown control command": {"answered E_UNKNOWN_COMMAND"},
    "control that is not JSON": {"left open", "answered E_BAD_COMMAND", "closed"},
    "text WebSocket message": {"left open"},  # ignored, as telebit does
    "truncated header, then silence": {"left open", "closed"},  # waits for the rest of the header
}


def _hostile_cases() -> list[tuple[str, Any]]:
    """(name, what to send once connected); the token decides what the edge should do."""
    addr = Address("IPv4", "10.9.8.7", "4242")
    return [
        ("no token (auth timeout)", None),
        ("bad token (401)", "bad-token"),
        ("version byte 0x00", b"\x00\x05hello"),
        ("header length 0", b"\xfe\x00"),
        ("declared body 1 GiB", pack_raw_header(("IPv4", "10.0.0.1", "1", str(1 << 30), "tcp", "", ""))),
        ("non-ASCII header", b"\xfe\x04\xff\xfe\xfd\xfc"),
        ("data for an unknown client", pack_data(addr, b"x", service="tcp")),
        ("unknown control command", pack_control([9, "no_such_command"])),
        ("control that is not JSON", pack_raw_header(("", "", "", "5", "control"), CONTROL_FIELDS)
         + b"{[[[["),
        ("text WebSocket message", "text"),
        ("truncated header, then silence", b"\xfe\xff" + b"IPv4,1"),
    ]


async def hostile(system: System, stats: Stats, stop: asyncio.Event, first: int) -> None:
    """One WebSocket per case, round robin: the edge must refuse or close each, and keep serving."""
    good = mint(SECRET, ports=[HOSTILE_PORT])
    url = f"ws://127.0.0.1:{system.tunnel}/tunnel"
    cases = _hostile_cases()
    i = first
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            name, payload = cases[i % len(cases)]
            i += 1
            token = None if payload is None else ("garbage.token.here" if payload == "bad-token" else good)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            outcome = "unexpected"
            seen = b""
            try:
                async with asyncio.timeout(10), session.ws_connect(url, headers=headers, autoping=True) as ws:
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    elif payload == "text":
                        await ws.send_str("hello?")
                    # the edge closes the tunnel (no token, bad framing) or answers and carries on
                    # (unknown client or command); either way it must not hang or take the edge down
                    async with asyncio.timeout(3.5):
                        while (msg := await ws.receive()).type is aiohttp.WSMsgType.BINARY:
                            seen += msg.data[:4096]
                    outcome = "closed"
            except aiohttp.WSServerHandshakeError as exc:
                outcome = f"HTTP {exc.status}"
            except TimeoutError:
                codes = [c for c in ("E_NO_CONN", "E_UNKNOWN_COMMAND", "E_BAD_COMMAND") if c.encode() in seen]
                outcome = f"answered {codes[0]}" if codes else "left open"
            except (aiohttp.ClientError, OSError) as exc:
                outcome = type(exc).__name__
            stats.hostile[name] += 1
            if outcome not in HOSTILE_EXPECTED.get(name, {"closed"}):
                stats.hostile_unexpected[f"{name}: {outcome}"] += 1


async def slowloris(system: System, stats: Stats, stop: asyncio.Event, n: int, delay: float) -> None:
    """Trickle a request head (HTTP) or a ClientHello (TLS) one byte a second; the edge must cut it
    at the sniff timeout."""
    await asyncio.sleep(delay)
    port = system.http if n % 2 else system.tls
    http_head = b"GET / HTTP/1.1\r\nHost: slow" + b"w" * 64
    client_hello = b"\x16\x03\x01\x02\x00\x01" + b"\x00" * 64  # a record of 512 bytes that never comes
    trickle = http_head if n % 2 else client_hello
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            for byte in trickle:
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                        break
        except OSError:
            pass
        finally:
            writer.close()
        held = time.monotonic() - started
        if not stop.is_set():
            stats.slowloris_cut += 1
            stats.slowloris_longest = max(stats.slowloris_longest, held)
            if held > SNIFF_TIMEOUT + 3:
                stats.slowloris_overdue += 1


# -- the run ----------------------------------------------------------------------------------------

def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def line(minute: float, sample: dict[str, dict[str, int]], stats: Stats, rate: float) -> str:
    roles = "  ".join(f"{name}: {s['rss_mib']} MiB {s['fds']} fds {s['threads']} thr"
                      for name, s in sample.items())
    return (f"[{minute:5.1f} min] streams {stats.streams} ({rate:.0f}/s) failed {stats.failed} corrupted "
            f"{stats.corrupted} verified {stats.bytes_verified / 1e6:.0f} MB "
            f"hostile {sum(stats.hostile.values())} slowloris cut {stats.slowloris_cut} | {roles}")


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="mproxy-soak-"))
    system = System(tmp)
    stats = Stats()
    await system.start()
    await asyncio.sleep(1)
    baseline = system.sample()
    print(f"soak: {args.minutes:g} min, {args.streams} concurrent streams, {args.slowloris} slowloris, "
          f"3 hostile tunnel peers; logs in {tmp}", flush=True)
    print("baseline: " + json.dumps(baseline), flush=True)
    stop = asyncio.Event()
    ramp = args.ramp_seconds
    tasks = [asyncio.ensure_future(honest(system, stats, stop, n, ramp * n / args.streams))
             for n in range(args.streams)]
    tasks += [asyncio.ensure_future(slowloris(system, stats, stop, n, ramp * n / max(1, args.slowloris)))
              for n in range(args.slowloris)]
    tasks += [asyncio.ensure_future(hostile(system, stats, stop, 4 * k)) for k in range(3)]
    minutes: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    last_streams, last_at = 0, started
    try:
        while (now := time.monotonic()) < end:
            await asyncio.sleep(min(args.interval, end - now))
            for proc in system.procs:
                if not proc.alive:
                    print(f"{proc.name} DIED:\n{proc.tail()}", flush=True)
                    return 1
            sample = system.sample()
            now = time.monotonic()
            rate = (stats.streams - last_streams) / (now - last_at)
            last_streams, last_at = stats.streams, now
            minutes.append({"minute": round((now - started) / 60, 2), "rate": round(rate), "roles": sample,
                            "streams": stats.streams, "failed": stats.failed})
            print(line((now - started) / 60, sample, stats, rate), flush=True)
            if stats.failed:
                roles = await system.refusals()
                print(f"    failures {dict(stats.failures)}; the roles count {roles}", flush=True)
        stop.set()
        await asyncio.wait(tasks, timeout=90)
        await asyncio.sleep(3)
        final = system.sample()
        for _ in range(20):  # let the last closes land
            if all(final[n]["fds"] == baseline[n]["fds"] for n in baseline):
                break
            await asyncio.sleep(0.5)
            final = system.sample()
        tunnels = await system.tunnels()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await system.stop()
    return report(args, stats, baseline, minutes, final, tunnels)


def report(args: argparse.Namespace, stats: Stats, baseline: dict[str, Any], minutes: list[dict[str, Any]],
           final: dict[str, Any], tunnels: int) -> int:
    problems = []
    if stats.corrupted:
        problems.append(f"{stats.corrupted} streams came back corrupted")
    if stats.failed:
        problems.append(f"{stats.failed} honest streams failed: {dict(stats.failures)}")
    if stats.hostile_unexpected:
        problems.append(f"hostile inputs answered unexpectedly: {dict(stats.hostile_unexpected)}")
    if stats.slowloris_overdue:
        problems.append(f"{stats.slowloris_overdue} slowloris connections held past the sniff timeout + 3 s")
    if tunnels != 4:
        problems.append(f"{tunnels} tunnels at the end, not 4")
    for name, base in baseline.items():
        if final.get(name, {}).get("fds") != base["fds"]:
            after = final.get(name, {}).get("fds")
            problems.append(f"{name}: {after} fds after the load, {base['fds']} before")
    if len(minutes) >= 3:
        early, late = minutes[1]["roles"], minutes[-1]["roles"]
        for name in early:
            a, b = early[name]["rss_mib"], late[name]["rss_mib"]
            if b - a > max(24, a * 0.2):
                problems.append(f"{name}: RSS grew from {a} MiB (minute 2) to {b} MiB (the end)")
    summary = {
        "minutes": args.minutes, "concurrentStreams": args.streams, "slowloris": args.slowloris,
        "streams": stats.streams, "failed": stats.failed, "corrupted": stats.corrupted,
        "bytesVerified": stats.bytes_verified, "hostile": dict(stats.hostile),
        "slowlorisCut": stats.slowloris_cut, "slowlorisLongestSeconds": round(stats.slowloris_longest, 2),
        "baseline": baseline, "final": final, "perMinute": minutes, "problems": problems,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"streams {stats.streams}, failed {stats.failed}, corrupted {stats.corrupted}, "
          f"bytes verified {stats.bytes_verified} ({stats.bytes_verified / 1e9:.2f} GB, both ways checked)")
    print(f"hostile inputs tried: {sum(stats.hostile.values())} " + json.dumps(dict(stats.hostile)))
    print(f"slowloris connections cut: {stats.slowloris_cut}, longest held {stats.slowloris_longest:.1f} s "
          f"(sniff timeout {SNIFF_TIMEOUT:g} s)")
    print("final: " + json.dumps(final))
    if problems:
        print("SOAK FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("SOAK PASSED: no corrupted byte, no failed stream, fds back to the baseline, RSS flat")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to hold the load (default 10)")
    parser.add_argument("--streams", type=int, default=2000, help="concurrent honest streams (default 2000)")
    parser.add_argument("--slowloris", type=int, default=100, help="slowloris connections (default 100)")
    parser.add_argument("--ramp-seconds", type=float, default=10.0,
                        help="start the streams and slowloris evenly over this long (default 10)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between reports (default 60)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.minutes <= 0 or args.streams < 1 or args.slowloris < 0 or args.ramp_seconds < 0:
        parser.error("--minutes must be > 0, --streams >= 1, --slowloris >= 0, --ramp-seconds >= 0")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
