"""UDP through mproxy vs direct, same run: DNS query latency and datagram loss at a fixed rate.

    .venv/bin/python tests/bench/udp_bench.py              # print the figures
    .venv/bin/python tests/bench/udp_bench.py --write      # also write docs/benchmarks/udp.md

Real processes on loopback: dnsmasq (Debian dnsmasq-base) answers; `mproxy edge` (a `kind: udp` listener)
and `mproxy sidecar` (a `udp` route to dnsmasq) run as their own processes; the client is this process.
- latency: N sequential A queries from one socket (one client stream), p50/p99 of the round trip;
- rate: one socket sends queries at a fixed rate for a few seconds; loss = 1 - answers / queries sent.
frp's and rathole's UDP are not in this run yet (mbench's scenarios are TCP only). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sidecar"))

from mproxy.edge.auth import mint  # noqa: E402

SECRET = b"udp-bench-secret-0123456789"
PUBLIC = 5353


def query(qid: int, name: str = "h.bench.test") -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with contextlib.suppress(OSError):
                t.bind(("127.0.0.1", port))
                return port


def wait_udp(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.connect(("127.0.0.1", port))
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                s.send(query(1))
                s.recv(4096)
                return
            time.sleep(0.1)
    raise SystemExit(f"nothing answers DNS on udp port {port}")


def latency(port: int, n: int) -> tuple[float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect(("127.0.0.1", port))
        times = []
        for i in range(n):
            q = query(i & 0xFFFF)
            start = time.perf_counter()
            s.send(q)
            answer = s.recv(4096)
            times.append(time.perf_counter() - start)
            assert answer[:2] == q[:2], "an answer to another query"
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3


def rate(port: int, per_second: float, seconds: float) -> tuple[int, int]:
    sent = got = 0

    async def run() -> None:
        nonlocal sent, got
        loop = asyncio.get_running_loop()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                nonlocal got
                got += 1

        transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
        start = loop.time()
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed * per_second)
            while sent < due:
                transport.sendto(query(sent & 0xFFFF))
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.sleep(1.0)  # the last answers
        transport.close()

    asyncio.run(run())
    return sent, got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rates", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not shutil.which("dnsmasq"):
        raise SystemExit("needs dnsmasq: scripts/install-test-tools")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        dns = free_port()
        procs.append(subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={dns}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--address=/bench.test/10.9.8.7", "--pid-file=", "--user=root", "--group=root",
             "--log-facility=/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            edge_port, tunnel = free_port(), free_port()
            (tmp / "secret").write_bytes(SECRET)
            (tmp / "edge.yaml").write_text(
                f"auth: {{secretFile: {tmp / 'secret'}}}\n"
                f"listeners: [{{kind: udp, listen: '127.0.0.1:{edge_port}', publicPort: {PUBLIC}, "
                "datagramRate: 1000000, datagramBurst: 1000000}]\n"
                f"tunnel: {{listen: '127.0.0.1:{tunnel}', path: /t}}\nhttp: {{listen: '127.0.0.1:0'}}\n"
                "logging: {level: warning}\n")
            (tmp / "token").write_text(mint(SECRET, domains=[], ports=[PUBLIC]))
            (tmp / "sidecar.yaml").write_text(
                f"edge: {{urls: ['ws://127.0.0.1:{tunnel}/t'], tokenFile: {tmp / 'token'}}}\n"
                f"routes: [{{name: dns, match: {{services: [udp], ports: [{PUBLIC}]}}, "
                f"backend: {{host: 127.0.0.1, port: {dns}}}}}]\nhttp: {{listen: '127.0.0.1:0'}}\n"
                "logging: {level: warning}\n")
            py = sys.executable
            procs.append(subprocess.Popen([py, "-m", "mproxy", "edge", "--config", str(tmp / "edge.yaml")]))
            procs.append(subprocess.Popen([py, "-m", "mproxy", "sidecar", "--config",
                                           str(tmp / "sidecar.yaml"), "--no-reload"]))
            wait_udp(dns)
            wait_udp(edge_port)
            rows = []
            for label, port in (("direct", dns), ("mproxy", edge_port)):
                p50, p99 = latency(port, args.queries)
                row = [label, f"{p50:.3f}", f"{p99:.3f}"]
                for r in (float(x) for x in args.rates.split(",")):
                    sent, got = rate(port, r, args.seconds)
                    row.append(f"{got / args.seconds:.0f} ({100 * (1 - got / sent):.1f} %)")
                rows.append(row)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
    rates = args.rates.split(",")
    head = ["path", "DNS p50 ms", "DNS p99 ms", *(f"answers/s at {r}/s (loss)" for r in rates)]
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                       *("| " + " | ".join(r) + " |" for r in rows)])
    print(table)
    if args.write:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        (REPO / "docs" / "benchmarks" / "udp.md").write_text(
            "# UDP: DNS through mproxy vs direct\n\n"
            f"`tests/bench/udp_bench.py` ({when}; {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; shared machine, so figures are indicative). dnsmasq answers; "
            "`mproxy edge` and `mproxy sidecar` are their own processes on loopback. Latency: "
            f"{args.queries} sequential queries from one socket. Rate: one socket at a fixed rate for "
            f"{args.seconds:g} s; loss = 1 - answers / queries. frp and rathole UDP are not in this run "
            "yet.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
