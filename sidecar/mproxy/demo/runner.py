"""`mproxy demo`: an edge relay, a sidecar that dials it, sample backends and live traffic, on loopback.

Everything runs in this one process on 127.0.0.1: the edge (public TLS/HTTP/TCP listeners + the tunnel
endpoint), the sidecar (two tunnel connections, so the edge balances between them), an HTTPS site whose
certificate comes from a CA generated into a temp dir, an HTTP site and a TCP echo. A traffic generator
sends real requests through the edge while a progress line counts them; the screen says what to point
curl or a browser at. Ctrl-C (or --duration) stops it and prints a metrics summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mproxy.ca import CertificateAuthority
from mproxy.config.edge import load_edge_config
from mproxy.config.sidecar import load_sidecar_config
from mproxy.demo.backends import DemoBackends
from mproxy.demo.traffic import Targets, TrafficGenerator
from mproxy.edge.auth import mint
from mproxy.edge.relay import EdgeRelay
from mproxy.metrics.edge import PROTOCOLS
from mproxy.sidecar.app import Sidecar

DOMAIN = "demo.localhost"  # *.localhost resolves to loopback in browsers and recent curl
HTTPS_NAME = f"secure.{DOMAIN}"
HTTP_NAME = f"www.{DOMAIN}"


@dataclass
class DemoPorts:
    https: int = 18443
    http: int = 18080
    tcp: int = 18022
    tunnel: int = 18444
    edge_http: int = 19090
    sidecar_http: int = 19091

    @classmethod
    def from_base(cls, base: int) -> DemoPorts:
        return cls(https=base + 443, http=base + 80, tcp=base + 22, tunnel=base + 444,
                   edge_http=base + 1090, sidecar_http=base + 1091)

    @classmethod
    def free(cls) -> DemoPorts:
        """Ports the kernel says are free right now (the demo binds them a moment later)."""
        socks, picked = [], []
        for _ in range(6):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            picked.append(s.getsockname()[1])
        for s in socks:
            s.close()
        return cls(*picked)


@dataclass
class DemoOptions:
    ports: DemoPorts
    duration: float | None = None
    interval: float = 0.25
    keep_dir: bool = False
    out: TextIO = sys.stdout


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.opt = options
        self.dir = Path(tempfile.mkdtemp(prefix="mproxy-demo-"))
        self.relay: EdgeRelay | None = None
        self.sidecar: Sidecar | None = None
        self.backends = DemoBackends()
        self.traffic: TrafficGenerator | None = None
        self.ca_path = self.dir / "ca.crt"
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        print(text, file=self.opt.out, flush=True)

    async def start(self) -> None:
        p = self.opt.ports
        ca = CertificateAuthority.create("mproxy demo CA")
        ca.write_cert(self.ca_path)
        leaf = ca.issue([HTTPS_NAME, DOMAIN])
        await self.backends.start(leaf.server_context(self.dir, "backend"))

        secret = secrets.token_urlsafe(32).encode()
        secret_file = self.dir / "edge-secret"
        secret_file.write_bytes(secret)
        secret_file.chmod(0o600)
        token_file = self.dir / "tunnel-token"
        token_file.write_text(mint(secret, domains=[DOMAIN], ports=[p.tcp], ttl=7 * 86400))
        token_file.chmod(0o600)

        edge_cfg = load_edge_config({
            "auth": {"secretFile": str(secret_file)},
            "listeners": [
                {"kind": "tls", "listen": f"127.0.0.1:{p.https}"},
                {"kind": "http", "listen": f"127.0.0.1:{p.http}"},
                {"kind": "tcp", "listen": f"127.0.0.1:{p.tcp}"},
            ],
            "tunnel": {"listen": f"127.0.0.1:{p.tunnel}", "path": "/tunnel"},
            "http": {"listen": f"127.0.0.1:{p.edge_http}"},
            "limits": {"connectionRate": 1000, "connectionBurst": 1000},
            "drainSeconds": 2,
        })
        (self.dir / "edge.yaml").write_text(edge_cfg.to_yaml())
        self.relay = EdgeRelay(edge_cfg, secret)
        await self.relay.start()

        b = self.backends
        sidecar_cfg = load_sidecar_config({
            "edge": {"urls": [f"ws://127.0.0.1:{p.tunnel}/tunnel"], "connectionsPerUrl": 2,
                     "tokenFile": str(token_file), "tokenIn": "handshake"},
            "routes": [
                {"name": "secure-site", "match": {"services": ["https"], "hostnames": [HTTPS_NAME]},
                 "backend": {"host": "127.0.0.1", "port": b.https_port}},
                {"name": "web-site", "match": {"services": ["http"], "hostnames": [HTTP_NAME]},
                 "backend": {"host": "127.0.0.1", "port": b.http_port}},
                {"name": "echo", "match": {"services": ["tcp"], "ports": [p.tcp]},
                 "backend": {"host": "127.0.0.1", "port": b.echo_port}},
            ],
            "http": {"listen": f"127.0.0.1:{p.sidecar_http}"},
            "logging": {"format": "text", "level": "warning"},
            "drainSeconds": 2,
        })
        (self.dir / "sidecar.yaml").write_text(sidecar_cfg.to_yaml())
        self.sidecar = Sidecar(sidecar_cfg)
        await self.sidecar.start()
        await self._wait_for_tunnels(2, within=15)
        self.traffic = TrafficGenerator(
            Targets(HTTPS_NAME, p.https, HTTP_NAME, p.http, p.tcp), ca.client_context(),
            interval=self.opt.interval)

    async def _wait_for_tunnels(self, want: int, within: float) -> None:
        assert self.relay is not None
        deadline = time.monotonic() + within
        while self.relay.table.names().get(DOMAIN, 0) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar did not connect to the edge within {within:g} s "
                                   f"(tunnels for {DOMAIN}: {self.relay.table.names().get(DOMAIN, 0)})")
            await asyncio.sleep(0.05)

    def banner(self) -> None:
        p = self.opt.ports
        self.say("mproxy demo is up: edge relay + sidecar (2 tunnels) + sample backends on 127.0.0.1")
        self.say(f"  working files (certs, configs, token): {self.dir}")
        self.say("")
        self.say("Try it:")
        self.say("  HTTPS (TLS passes through the edge untouched, routed by SNI; the certificate is the")
        self.say(f"  backend's own, issued by the demo CA {self.ca_path}):")
        self.say(f"    curl --cacert {self.ca_path} --resolve {HTTPS_NAME}:{p.https}:127.0.0.1 "
                 f"https://{HTTPS_NAME}:{p.https}/")
        self.say(f"    browser: https://{HTTPS_NAME}:{p.https}/  (import {self.ca_path} as a CA, or accept "
                 "the warning)")
        self.say("  HTTP (routed by Host):")
        self.say(f"    curl -H 'Host: {HTTP_NAME}' http://127.0.0.1:{p.http}/")
        self.say(f"    browser: http://{HTTP_NAME}:{p.http}/")
        self.say("  raw TCP (an echo service, routed by port):")
        self.say(f"    echo hello | nc -q1 127.0.0.1 {p.tcp}")
        self.say("  observe:")
        self.say(f"    edge    http://127.0.0.1:{p.edge_http}/status  /metrics  /readyz")
        self.say(f"    sidecar http://127.0.0.1:{p.sidecar_http}/status  /metrics  /readyz")
        self.say("")

    def progress_line(self) -> str:
        assert self.traffic is not None
        t = self.traffic.tally
        elapsed = time.monotonic() - self.started
        line = (f"[{elapsed:5.1f}s] traffic: https {t.ok['https']} ok, http {t.ok['http']} ok, "
                f"tcp {t.ok['tcp']} ok, {t.total_failed} failed, {t.bytes / 1e6:.2f} MB")
        if t.last_error and t.total_failed:
            line += f"  (last error: {t.last_error[:80]})"
        return line

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except OSError as exc:
            self.say(f"mproxy demo: cannot start: {exc.strerror or exc}. A demo port is taken: pass "
                     "--free-ports, or --base-port N to move them all.")
            return 1
        except RuntimeError as exc:
            self.say(f"mproxy demo: {exc}")
            return 1
        self.banner()
        self.started = time.monotonic()
        assert self.traffic is not None
        traffic_task = asyncio.ensure_future(self.traffic.run(stop))
        tty = self.opt.out.isatty()
        if self.opt.duration is not None:
            loop.call_later(self.opt.duration, stop.set)
        else:
            self.say("Sending sample traffic; press Ctrl-C to stop.")
        next_line = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            now = time.monotonic()
            if tty:
                self.opt.out.write("\r" + self.progress_line() + "\x1b[K")
                self.opt.out.flush()
            elif now >= next_line:
                self.say(self.progress_line())
                next_line = now + 1.0
        await traffic_task
        await self._settle()
        if tty:
            self.opt.out.write("\n")
        self.say(self.progress_line())
        self.summary()
        tally = self.traffic.tally
        ok = tally.total_ok > 0 and tally.total_failed == 0
        if not ok:
            self.say(f"mproxy demo: traffic failed ({tally.total_failed} failures; last: {tally.last_error})")
        return 0 if ok else 1

    async def _settle(self, within: float = 2.0) -> None:
        """Let the last connections finish closing, so the summary counts them."""
        assert self.relay is not None
        reg = self.relay.metrics.registry
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            active = sum(reg.get_sample_value("mproxy_edge_client_connections_active", {"protocol": p}) or 0
                         for p in PROTOCOLS)
            if not active:
                return
            await asyncio.sleep(0.05)

    def summary(self) -> None:
        assert self.relay is not None
        reg = self.relay.metrics.registry

        def val(metric: str, **labels: str) -> float:
            return reg.get_sample_value(metric, labels) or 0.0

        self.say("")
        self.say("Metrics summary (from the edge's /metrics):")
        tunnels = val("mproxy_edge_name_tunnels", name=DOMAIN)
        self.say(f"  tunnels serving {DOMAIN}: {tunnels:.0f}")
        for protocol in PROTOCOLS:
            name = DOMAIN if protocol != "tcp" else ""
            ok = val("mproxy_edge_client_connections_total", protocol=protocol, name=name, result="ok")
            b_in = val("mproxy_edge_bytes_total", protocol=protocol, name=name, direction="in")
            b_out = val("mproxy_edge_bytes_total", protocol=protocol, name=name, direction="out")
            self.say(f"  {protocol:5}  client connections ok {ok:.0f}, bytes in {b_in:.0f}, out {b_out:.0f}")
        rejects = {s.labels["reason"]: s.value for m in reg.collect() if m.name == "mproxy_edge_rejects"
                   for s in m.samples if s.name.endswith("_total") and s.value}
        self.say(f"  rejects: {rejects or 'none'}")

    async def close(self) -> None:
        if self.sidecar is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sidecar.shutdown(), 5)
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.drain(1.0), 5)
        await self.backends.close()
        if not self.opt.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


async def run_demo(options: DemoOptions) -> int:
    """Run the demo; whatever happens, stop its parts and remove its files (unless keep_dir)."""
    demo = Demo(options)
    try:
        return await demo.run()
    finally:
        with contextlib.suppress(Exception):
            await demo.close()
