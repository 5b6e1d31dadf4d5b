"""The UDP scenario: DNS over UDP through each system that carries UDP, against dnsmasq direct.

dnsmasq (Debian dnsmasq-base) answers A queries for *.bench.test; the Go load generator (`loadgen dns`)
is the client, one connected socket, so every tunnel carries it as one UDP client:
- latency: one query at a time for plan.duration s: round-trip p50/p99;
- at each of RATES queries/s, for plan.duration s on a fixed schedule: answers/s and loss.
Each system here is its own UDP-only instance (frp's `type = "udp"` proxy, rathole's `type = "udp"`
service, mproxy's `kind: udp` listener and `udp` route, over ws and wss), started for this scenario and
stopped after it, so the TCP systems' configurations and figures are untouched.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time
from collections.abc import Callable, Sequence

from tests.ports import free_port

from mbench.procs import BenchError, Proc, recorded
from mbench.scenarios import Metrics, Plan, loadgen
from mbench.systems import (
    RUN_YAML,
    Context,
    Direct,
    Frp,
    Rathole,
    System,
    TunnelSystem,
    mproxy_argv,
    mproxy_auth,
)

RATES = (1000, 10000)  # queries per second of the fixed-rate windows
NAMES = ("direct", "mproxy", "mproxy-wss", "frp", "rathole")  # with a UDP variant, in report order
QUERY = (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01h\x05bench\x04test\x00"
         + struct.pack("!HH", 1, 1))  # id 1, RD; A IN h.bench.test


def dns_once(port: int, timeout: float = 0.5) -> bool:
    """One DNS query through the entry port: True when an answer came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", port))
            s.send(QUERY)
            return s.recv(4096)[:2] == QUERY[:2]
        except OSError:
            return False


def start_dnsmasq(ctx: Context) -> tuple[Proc, int]:
    exe = shutil.which("dnsmasq", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if exe is None:
        raise BenchError("dnsmasq is not installed (Debian dnsmasq-base: scripts/install-test-tools)")
    port = free_port(udp=True)  # dnsmasq binds UDP and TCP
    argv = [exe, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            "--address=/bench.test/10.9.8.7", "--pid-file=", "--user=root", "--group=root",
            "--log-facility=-", "--cache-size=0"]
    proc = Proc("dnsmasq", argv, ctx.work)
    deadline = time.monotonic() + 10
    while not dns_once(port):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise BenchError(f"dnsmasq did not answer on udp port {port}: {proc.tail()}")
        time.sleep(0.05)
    return proc, port


class UdpSystem(System):
    """A system whose entry is a UDP port; flowing = a DNS query is answered through it."""

    probe = "DNS answer"

    def flows(self) -> bool:
        return dns_once(self.entry)


class UdpDirect(UdpSystem, Direct):
    describe = "the client queries dnsmasq itself"


class UdpTunnel(UdpSystem, TunnelSystem):
    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.logdir = ctx.work / f"{self.name}-udp"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.entry = free_port(udp=True)


class UdpFrp(UdpTunnel, Frp):
    name, label = "frp", "frp"
    describe = "frps / frpc, one `type = \"udp\"` proxy (over frp's TLS + yamux control connection)"
    proxy, kind = "dns", "udp"


class UdpRathole(UdpTunnel, Rathole):
    name, label = "rathole", "rathole"
    describe = "rathole server / client, one `type = \"udp\"` service, tcp transport"
    service, kind = "dns", 'type = "udp"\n'


# The per-client datagram rate (default 1,000/s) raised past the scenario: the data path is measured.
EDGE_YAML = """\
auth:
  secretFile: {secret}
listeners:
  - kind: udp
    listen: "127.0.0.1:{entry}"
    datagramRate: 1000000
    datagramBurst: 1000000
tunnel:
  listen: "127.0.0.1:{control}"
  path: /{tunnel_tls}
""" + RUN_YAML

SIDECAR_YAML = """\
edge:
  urls: ["{scheme}://{host}:{control}/"]
  tokenFile: {token_file}{ca_file}
routes:
  - name: dns
    match:
      services: [udp]
      ports: [{entry}]
    backend:
      host: 127.0.0.1
      port: {backend}
""" + RUN_YAML


class UdpMproxy(UdpTunnel):
    name, label = "mproxy", "mproxy"
    describe = "mproxy edge (`kind: udp` listener) + mproxy sidecar (`udp` route), one tunnel over ws"
    tls = False

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        auth = mproxy_auth(ctx, self.logdir, self.entry, self.tls)
        self.edge_conf, self.sidecar_conf = auth.write_configs(
            EDGE_YAML, SIDECAR_YAML, control=self.control, entry=self.entry, backend=backend_port)

    def start_edge(self) -> Proc:
        return Proc("mproxy-edge", mproxy_argv(self.ctx, "edge", self.edge_conf), self.logdir)

    def start_device(self) -> Proc:
        argv = mproxy_argv(self.ctx, "sidecar", self.sidecar_conf, "--no-reload")
        return Proc("mproxy-sidecar", argv, self.logdir)


class UdpMproxyWss(UdpMproxy):
    name, label = "mproxy-wss", "mproxy (wss)"
    describe = "the same over wss:// (tunnel.tls with a private CA, edge.caFile): the production setting"
    tls = True


UDP_SYSTEMS: dict[str, type[UdpSystem]] = {
    cls.name: cls for cls in (UdpDirect, UdpMproxy, UdpMproxyWss, UdpFrp, UdpRathole)
}


def _dur(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def scenario(system: System, plan: Plan) -> Metrics:
    """Sequential DNS latency, then each fixed rate: flat metrics, names ending in their unit."""
    r = loadgen(system, "dns", "-duration", _dur(plan.duration), timeout=plan.duration + 30)
    if not r["answered"]:
        raise BenchError(f"no DNS query was answered ({r['timeouts']} timed out): {r.get('errors')}")
    out: Metrics = {"udp_dns_p50_ms": r["p50_ms"], "udp_dns_p99_ms": r["p99_ms"],
                    "udp_dns_seq_per_s": r["per_sec"]}
    for rate in RATES:
        time.sleep(1.0)  # the previous window's stragglers are gone before this one counts
        r = loadgen(system, "dns", "-rate", str(rate), "-duration", _dur(plan.duration),
                    timeout=plan.duration + 30)
        out[f"udp{rate}_answers_per_s"] = r["per_sec"]
        out[f"udp{rate}_loss_pct"] = r["loss_pct"]
        out[f"udp{rate}_p99_ms"] = r["p99_ms"] if r["answered"] else None
    return out


def measure_round(ctx: Context, plan: Plan, systems: Sequence[str], errors: dict[str, str],
                  log: Callable[[str], None]) -> dict[str, Metrics]:
    """One round of the UDP scenario over every system of `systems` that has a UDP variant."""
    out: dict[str, Metrics] = {}
    try:
        dns, port = start_dnsmasq(ctx)
    except BenchError as exc:
        errors.setdefault("udp", str(exc))
        log(f"  udp: {exc}")
        return out
    try:
        for name in (n for n in systems if n in UDP_SYSTEMS):
            log(f"  {name}: udp")
            system = UDP_SYSTEMS[name](ctx, port)
            try:
                with recorded(errors, name, "udp", log):
                    system.start()
                    out[name] = scenario(system, plan)
            finally:
                system.stop()
    finally:
        dns.stop()
    return out
