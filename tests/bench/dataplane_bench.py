"""Data-plane benchmark: the sidecar behind a relay, against a direct loopback baseline, in one run.

    .venv/bin/python tests/bench/dataplane_bench.py [--relay node|edge|both] [--quick] [--out FILE]

Processes: a backend (this file, `--serve-backend`), the relay (tests/interop/node/relay.js, or
`mproxy edge`), `mproxy sidecar`, and the load generator (this process). Every figure is taken in the same
run as its direct baseline (client -> backend, no tunnel), so the ratios hold on a busy machine; absolute
numbers don't.

Scenarios:
- bulk: one stream, 256 MiB upload (client -> backend) and download (backend -> client), MB/s
- rr: 64-byte request/response, sequential, p50/p99 latency
- interactive: rr p99 on one stream while another stream downloads in bulk, vs the same stream idle
- idle memory: sidecar RSS growth per idle stream at 10,000 streams
- new streams/s: connect, 1-byte echo, close, 50 at a time
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The repo root, for what the benchmark shares with the test harnesses (tests.ports.free_port).
sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "interop" / "node"
CHUNK = 256 * 1024


# -- the backend (a separate process) -----------------------------------------------------------------

async def _backend_main(port_file: str) -> None:
    """Protocol by first byte: b"U" upload sink (answers the byte count at EOF), b"D" + 8-byte size
    download source, b"E" echo, b"I" idle (holds the connection)."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            kind = await r.readexactly(1)
            if kind == b"U":
                total = 0
                while data := await r.read(CHUNK):
                    total += len(data)
                w.write(str(total).encode())
                await w.drain()
            elif kind == b"D":
                size = int.from_bytes(await r.readexactly(8), "big")
                blob = b"d" * CHUNK
                sent = 0
                while sent < size:
                    n = min(CHUNK, size - sent)
                    w.write(blob if n == CHUNK else blob[:n])
                    await w.drain()
                    sent += n
            elif kind == b"E":
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            elif kind == b"I":
                await r.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096, limit=CHUNK)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    await server.serve_forever()


# -- helpers --------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- scenarios ------------------------------------------------------------------------------------------

async def bulk_upload(port: int, size: int) -> float:
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
    blob = b"u" * CHUNK
    t0 = time.perf_counter()
    w.write(b"U")
    sent = 0
    while sent < size:
        w.write(blob)
        await w.drain()
        sent += CHUNK
    w.write_eof()
    answer = await r.read()
    dt = time.perf_counter() - t0
    w.close()
    assert int(answer) == size, (answer, size)
    return size / dt / 1e6


async def bulk_download(port: int, size: int) -> float:
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
    t0 = time.perf_counter()
    w.write(b"D" + size.to_bytes(8, "big"))
    got = 0
    while got < size:
        data = await r.read(CHUNK)
        if not data:
            raise RuntimeError(f"download ended at {got} of {size}")
        got += len(data)
    dt = time.perf_counter() - t0
    w.close()
    return size / dt / 1e6


async def rr_latencies(port: int, n: int, stop: asyncio.Event | None = None) -> list[float]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"E")
    msg = b"r" * 64
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        w.write(msg)
        await r.readexactly(64)
        out.append(time.perf_counter() - t0)
        if stop is not None and stop.is_set():
            break
    w.close()
    return out


async def interactive_under_bulk(port: int, n: int) -> list[float]:
    stop = asyncio.Event()
    bulk_done = asyncio.Event()

    async def bulk() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
        w.write(b"D" + (1 << 40).to_bytes(8, "big"))
        while not stop.is_set():
            data = await r.read(CHUNK)
            if not data:
                break
        w.close()
        bulk_done.set()

    task = asyncio.ensure_future(bulk())
    await asyncio.sleep(0.5)  # let the bulk stream fill the tunnel
    try:
        return await rr_latencies(port, n)
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def idle_streams(port: int, n: int, pid: int) -> tuple[float, int]:
    """RSS growth of `pid` per idle stream (bytes), with n streams open through `port`."""
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    conns = []
    for i in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"I")
        conns.append(w)
        if i % 200 == 199:
            await asyncio.sleep(0.01)
    await asyncio.sleep(2.0)  # all connected to the backend
    after = rss_kib(pid)
    for w in conns:
        w.close()
    await asyncio.sleep(1.0)
    return (after - before) * 1024 / n, n


async def new_streams_per_second(port: int, seconds: float, concurrency: int = 50) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"E!")
            await r.readexactly(1)
            w.close()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


# -- systems --------------------------------------------------------------------------------------------

class Stack:
    """backend + relay + sidecar processes; `entry` is where clients connect."""

    def __init__(self, relay: str, backend_port: int, workdir: Path, sndbuf: int | str = "auto") -> None:
        self.relay = relay
        self.sndbuf = sndbuf
        self.backend_port = backend_port
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.entry = free_port()
        self.control = free_port()
        self.sidecar_pid = 0

    def _spawn(self, argv: list[str], name: str, **kw: Any) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(REPO / "sidecar"))
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, **kw)
        self.procs.append(proc)
        return proc

    async def start(self) -> None:
        token = secrets.token_hex(16)
        token_file = self.dir / "token"
        if self.relay == "node":
            conf = {"host": "127.0.0.1", "wsPort": self.control, "token": token,
                    "listeners": [{"port": self.entry, "service": "tcp", "serviceport": self.entry}]}
            self._spawn(["node", str(NODE_DIR / "relay.js"), json.dumps(conf)], "relay",
                        stdin=subprocess.PIPE)
        else:
            secret = self.dir / "secret"
            secret.write_text(secrets.token_hex(32))
            out = subprocess.run([sys.executable, "-m", "mproxy", "token", "--secret-file", str(secret),
                                  "--port", str(self.entry)], capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(REPO / "sidecar")), check=True)
            token = out.stdout.strip()
            (self.dir / "edge.yaml").write_text(
                f"auth: {{secretFile: {secret}}}\n"
                f"listeners: [{{kind: tcp, listen: '127.0.0.1:{self.entry}'}}]\n"
                f"tunnel: {{listen: '127.0.0.1:{self.control}', path: /}}\n"
                "limits: {maxStreamsPerTunnel: 1000000, maxStreamsPerClient: 1000000,"
                " connectionRate: 1000000, connectionBurst: 1000000}\n"
                f"http: {{listen: '127.0.0.1:{free_port()}'}}\nlogging: {{format: text, level: warning}}\n"
                "drainSeconds: 1\n")
            self._spawn([sys.executable, "-m", "mproxy", "edge", "--config", str(self.dir / "edge.yaml")],
                        "edge")
        token_file.write_text(token)
        await wait_port(self.control)
        (self.dir / "sidecar.yaml").write_text(
            f"edge: {{urls: ['ws://127.0.0.1:{self.control}/'], tokenFile: {token_file}}}\n"
            f"routes: [{{name: bench, backend: {{host: 127.0.0.1, port: {self.backend_port}}}}}]\n"
            "limits: {maxStreamsPerTunnel: 100000, maxStreamsPerClient: 100000, "
            f"tunnelSendBufferBytes: {self.sndbuf}}}\n"
            f"http: {{listen: '127.0.0.1:{free_port()}'}}\nlogging: {{format: text, level: warning}}\n"
            "drainSeconds: 1\n")
        sidecar = self._spawn([sys.executable, "-m", "mproxy", "sidecar", "--config",
                               str(self.dir / "sidecar.yaml"), "--no-reload"], "sidecar")
        self.sidecar_pid = sidecar.pid
        await wait_port(self.entry)
        # Flowing end to end?
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                lat = await asyncio.wait_for(rr_latencies(self.entry, 1), 2)
                if lat:
                    return
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.relay} stack never carried traffic; see {self.dir}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


async def measure(port: int, quick: bool, sidecar_pid: int | None) -> dict[str, Any]:
    size = (64 if quick else 256) << 20
    n_rr = 500 if quick else 3000
    res: dict[str, Any] = {}
    res["upload_MBps"] = max([await bulk_upload(port, size) for _ in range(2)])
    res["download_MBps"] = max([await bulk_download(port, size) for _ in range(2)])
    lat = await rr_latencies(port, n_rr)
    res["rr_p50_us"] = pct(lat, 0.5) * 1e6
    res["rr_p99_us"] = pct(lat, 0.99) * 1e6
    busy = await interactive_under_bulk(port, n_rr // 2)
    res["rr_busy_p50_us"] = pct(busy, 0.5) * 1e6
    res["rr_busy_p99_us"] = pct(busy, 0.99) * 1e6
    res["new_streams_per_s"] = await new_streams_per_second(port, 2.0 if quick else 4.0)
    if sidecar_pid:
        per, n = await idle_streams(port, 2000 if quick else 10000, sidecar_pid)
        res["idle_bytes_per_stream"] = per
        res["idle_streams"] = n
    return res


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mproxy-bench-"))
    port_file = work / "backend.port"
    backend = subprocess.Popen([sys.executable, __file__, "--serve-backend", str(port_file)])
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("backend did not start")
            await asyncio.sleep(0.05)
        backend_port = int(port_file.read_text())
        results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                                               "tunnel_sndbuf": args.tunnel_sndbuf}}
        results["direct"] = await measure(backend_port, args.quick, None)
        relays = ["node", "edge"] if args.relay == "both" else [args.relay]
        for relay in relays:
            d = work / relay
            d.mkdir()
            stack = Stack(relay, backend_port, d, args.tunnel_sndbuf)
            try:
                await stack.start()
                results[relay] = await measure(stack.entry, args.quick, stack.sidecar_pid)
            except Exception as exc:  # report what failed, keep the other figures
                results[relay] = {"error": f"{type(exc).__name__}: {exc}", "logs": str(d)}
            finally:
                stack.stop()
        return results
    finally:
        backend.terminate()
        backend.wait(5)


def report(results: dict[str, Any]) -> str:
    direct = results["direct"]
    lines = [f"machine: {results['machine']['cpus']} CPUs, load average "
             f"{', '.join(f'{x:.1f}' for x in results['machine']['loadavg'])} at start; sidecar "
             f"tunnelSendBufferBytes={results['machine'].get('tunnel_sndbuf', 'auto')}", ""]
    lines.append("| figure | direct | " + " | ".join(f"via {k} relay + sidecar" for k in results
                                                       if k not in ("machine", "direct")) + " |")
    lines.append("|---|---|" + "---|" * (len(results) - 2))
    keys = [("upload_MBps", "bulk upload, one stream (MB/s)"),
            ("download_MBps", "bulk download, one stream (MB/s)"),
            ("rr_p50_us", "64 B request/response p50 (us)"), ("rr_p99_us", "64 B request/response p99 (us)"),
            ("rr_busy_p50_us", "... while a bulk stream runs, p50 (us)"),
            ("rr_busy_p99_us", "... while a bulk stream runs, p99 (us)"),
            ("new_streams_per_s", "new streams per second (50 concurrent)"),
            ("idle_bytes_per_stream", "sidecar RSS per idle stream (bytes)")]
    for key, label in keys:
        row = [label, f"{direct.get(key, float('nan')):.0f}" if key in direct else "-"]
        for name, res in results.items():
            if name in ("machine", "direct"):
                continue
            if "error" in res:
                row.append(res["error"][:60])
                continue
            v = res.get(key)
            cell = f"{v:.0f}" if v is not None else "-"
            if v is not None and key in direct and direct[key]:
                cell += f" ({v / direct[key]:.2f}x)"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    for name, res in results.items():
        if name in ("machine", "direct") or "error" in res:
            continue
        ratio = res["rr_busy_p99_us"] / res["rr_p99_us"]
        lines.append("")
        lines.append(f"{name}: interactive p99 under bulk / idle p99 = {ratio:.2f}x (goal <= 3x); "
                     f"bulk upload {res['upload_MBps'] / direct['upload_MBps']:.0%} and download "
                     f"{res['download_MBps'] / direct['download_MBps']:.0%} of direct (goal >= 20%); "
                     f"{res.get('idle_bytes_per_stream', 0) / 1024:.1f} KiB per idle stream at "
                     f"{res.get('idle_streams', 0)} streams (goal <= 16 KiB)")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-backend":
        asyncio.run(_backend_main(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay", choices=("node", "edge", "both"), default="node")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--tunnel-sndbuf", default="auto", metavar="BYTES",
                        help="the sidecar's limits.tunnelSendBufferBytes: auto (default), 0 = kernel "
                             "autotuning, or a size")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
