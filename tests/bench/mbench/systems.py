"""The measured systems. Each carries client streams from an entry port on 127.0.0.1 to the backend.

A system is two roles: the *edge* (the public side, where clients connect) and the *device* (the side
beside the backend that dials the edge). Direct loopback has neither: clients reach the backend itself.
Every peer runs with its documented defaults, bound to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

from mbench.procs import BenchError, Proc, wait_port

TLS_NAME = "bench.test"  # the backend's own certificate name (tests/bench/loadgen/tlsmix.go)


@dataclass(frozen=True, slots=True)
class Context:
    repo: Path
    cache: Path
    work: Path  # per-run scratch dir for configs and logs
    loadgen: Path

    @property
    def peers_bin(self) -> Path:
        return self.cache / "peers" / "bin"

    @property
    def python(self) -> Path:
        return self.repo / ".venv" / "bin" / "python"


def echo_once(port: int, timeout: float = 1.0) -> bool:
    """One end-to-end echo through the entry port: True when the backend answered."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"Ep")
            return s.recv(1) == b"p"
    except OSError:
        return False


class System:
    name = "?"
    label = "?"
    describe = ""

    def __init__(self, ctx: Context, backend_port: int) -> None:
        self.ctx = ctx
        self.backend_port = backend_port
        self.entry = 0
        self.tls_entry = 0  # where HTTPS clients connect, when not `entry` (an SNI listener)
        self.edge: Proc | None = None
        self.device: Proc | None = None
        self.logdir = ctx.work / self.name
        self.notes: list[str] = []  # partial failures worth a line in the report

    # Roles; direct loopback has none.
    def start_edge(self) -> Proc | None:
        return None

    def start_device(self) -> Proc | None:
        return None

    def edge_ready(self) -> None:
        """Wait until the edge listens for devices."""

    def start(self, timeout: float = 30.0) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.edge = self.start_edge()
        if self.edge is not None:
            self.edge_ready()
        self.device = self.start_device()
        self.wait_flowing(timeout)

    def flows(self) -> bool:
        """One probe through the entry port: True when the backend answered."""
        return echo_once(self.entry)

    probe = "traffic"  # what flows() waits for, in the error

    def wait_flowing(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in (self.edge, self.device):
                if proc is not None and not proc.alive():
                    raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
            if self.flows():
                return
            time.sleep(0.05)
        tails = "; ".join(f"{p.name}: {p.tail(400)}" for p in (self.edge, self.device) if p is not None)
        raise BenchError(f"no {self.probe} through {self.label} after {timeout:.0f}s ({tails})")

    def restart_edge(self) -> tuple[float, float]:
        """Stop the edge, start a new one; return (time it was gone, time the new one was spawned)."""
        if self.edge is None:
            raise BenchError(f"{self.label} has no edge to restart")
        self.edge.stop()
        stopped = time.time()
        self.edge = self.start_edge()
        return stopped, self.edge.started if self.edge else time.time()

    def stop(self) -> None:
        for proc in (self.device, self.edge):
            if proc is not None:
                proc.stop()


class Direct(System):
    name, label = "direct", "direct loopback"
    describe = "client connects straight to the backend (the ceiling)"

    def start(self, timeout: float = 30.0) -> None:
        self.entry = self.backend_port
        self.wait_flowing(timeout)


class TunnelSystem(System):
    """A system with a control (tunnel) port between its edge and its device, and a public entry port."""

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.control = free_port()
        self.entry = free_port()

    def edge_ready(self) -> None:
        wait_port(self.control, proc=self.edge)


class Chisel(TunnelSystem):
    name, label = "chisel", "chisel"
    describe = "chisel server --reverse / chisel client R:... (SSH over WebSocket)"

    def start_edge(self) -> Proc:
        exe = self.ctx.peers_bin / "chisel"
        argv = [str(exe), "server", "--host", "127.0.0.1", "--port", str(self.control), "--reverse"]
        return Proc("chisel-server", argv, self.logdir)

    def start_device(self) -> Proc:
        exe = self.ctx.peers_bin / "chisel"
        remote = f"R:127.0.0.1:{self.entry}:127.0.0.1:{self.backend_port}"
        argv = [str(exe), "client", f"http://127.0.0.1:{self.control}", remote]
        return Proc("chisel-client", argv, self.logdir)


class Frp(TunnelSystem):
    name, label = "frp", "frp"
    describe = ("frps / frpc, one tcp proxy (yamux over one TLS connection: transport.tls.enable is frp's "
                "default since v0.50)")
    proxy, kind = "bench", "tcp"  # frpc's one proxy

    def start_edge(self) -> Proc:
        conf = self.logdir / "frps.toml"
        conf.write_text(f'bindAddr = "127.0.0.1"\nbindPort = {self.control}\nproxyBindAddr = "127.0.0.1"\n'
                        'log.level = "warn"\n')
        return Proc("frps", [str(self.ctx.peers_bin / "frps"), "-c", str(conf)], self.logdir)

    def start_device(self) -> Proc:
        conf = self.logdir / "frpc.toml"
        conf.write_text(
            f'serverAddr = "127.0.0.1"\nserverPort = {self.control}\nloginFailExit = false\n'
            'log.level = "warn"\n\n'
            f'[[proxies]]\nname = "{self.proxy}"\ntype = "{self.kind}"\nlocalIP = "127.0.0.1"\n'
            f"localPort = {self.backend_port}\nremotePort = {self.entry}\n")
        return Proc("frpc", [str(self.ctx.peers_bin / "frpc"), "-c", str(conf)], self.logdir)


class Rathole(TunnelSystem):
    name, label = "rathole", "rathole"
    describe = "rathole server / client, tcp transport (one data connection per stream)"
    service, kind = "bench", ""  # the one service; its `type` line, "" for rathole's default tcp

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.token = secrets.token_hex(16)

    def _start(self, role: str, addr: str, service_addr: str) -> Proc:
        conf = self.logdir / f"{role}.toml"
        conf.write_text(
            f'[{role}]\n{addr} = "127.0.0.1:{self.control}"\ndefault_token = "{self.token}"\n\n'
            f"[{role}.services.{self.service}]\n{self.kind}{service_addr}\n")
        return Proc(f"rathole-{role}", [str(self.ctx.peers_bin / "rathole"), f"--{role}", str(conf)],
                    self.logdir, env={"RUST_LOG": "warn"})

    def start_edge(self) -> Proc:
        return self._start("server", "bind_addr", f'bind_addr = "127.0.0.1:{self.entry}"')

    def start_device(self) -> Proc:
        return self._start("client", "remote_addr", f'local_addr = "127.0.0.1:{self.backend_port}"')


class Bore(System):
    name, label = "bore", "bore"
    describe = "bore server / bore local (control port 7835 is fixed; one TCP connection per stream)"
    CONTROL = 7835

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.entry = free_port()

    def start_edge(self) -> Proc:
        argv = [str(self.ctx.peers_bin / "bore"), "server", "--bind-addr", "127.0.0.1",
                "--min-port", str(self.entry), "--max-port", str(self.entry)]
        return Proc("bore-server", argv, self.logdir, env={"RUST_LOG": "warn"})

    def edge_ready(self) -> None:
        wait_port(self.CONTROL, proc=self.edge)

    def start_device(self) -> Proc:
        argv = [str(self.ctx.peers_bin / "bore"), "local", str(self.backend_port), "--local-host",
                "127.0.0.1", "--to", "127.0.0.1", "--port", str(self.entry)]
        return Proc("bore-local", argv, self.logdir, env={"RUST_LOG": "warn"})


def _secret_and_token(ctx: Context, logdir: Path, port: int, *domains: str) -> tuple[Path, str]:
    """A fresh shared secret and a token granting `port` (and `domains`), minted by `mproxy token`."""
    secret = logdir / "secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    secret.chmod(0o600)
    out = subprocess.run(
        [str(ctx.python), "-m", "mproxy", "token", "--secret-file", str(secret), "--port", str(port),
         *(arg for d in domains for arg in ("--domain", d))],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"mproxy token failed: {out.stderr.strip()[-300:]}")
    return secret, out.stdout.strip()


@dataclass(frozen=True, slots=True)
class MproxyAuth:
    """What a bench mproxy edge and sidecar share: the secret, the sidecar's token file and, over wss,
    the edge's tunnel certificate and the CA the sidecar trusts."""

    secret: Path
    token_file: Path
    tls: bool
    tunnel_tls: str = ""  # the edge's `tunnel.tls` lines
    ca_file: str = ""  # the sidecar's `edge.caFile` line

    def edge_fields(self) -> dict[str, object]:
        return {"secret": self.secret, "tunnel_tls": self.tunnel_tls}

    def sidecar_fields(self) -> dict[str, object]:
        return {"token_file": self.token_file, "ca_file": self.ca_file, "scheme": "wss" if self.tls else "ws",
                "host": "localhost" if self.tls else "127.0.0.1"}

    def write_configs(self, edge_yaml: str, sidecar_yaml: str, **fields: object) -> tuple[Path, Path]:
        """edge.yaml and sidecar.yaml beside the token, from the templates with `fields` (control, entry,
        backend, ...) and a free metrics port each: their paths."""
        edge, sidecar = self.token_file.parent / "edge.yaml", self.token_file.parent / "sidecar.yaml"
        edge.write_text(edge_yaml.format(**self.edge_fields(), **fields, http=free_port()))
        sidecar.write_text(sidecar_yaml.format(**self.sidecar_fields(), **fields, http=free_port()))
        return edge, sidecar


def mproxy_auth(ctx: Context, logdir: Path, port: int, tls: bool, *domains: str) -> MproxyAuth:
    """A secret, a token granting `port` (and `domains`) in a 0600 file and, with `tls`, a private CA and
    the tunnel's certificate for localhost, all in `logdir`."""
    secret, token = _secret_and_token(ctx, logdir, port, *domains)
    token_file = logdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    if not tls:
        return MproxyAuth(secret, token_file, tls)
    from mproxy.ca import CertificateAuthority  # the bench runs on the repo's venv

    ca = CertificateAuthority.create("mproxy bench CA")
    ca_path = ca.write_cert(logdir / "ca.crt")
    cert, key = ca.issue(["localhost"]).write(logdir, "tunnel")
    return MproxyAuth(secret, token_file, tls, ca_file=f"\n  caFile: {ca_path}",
                      tunnel_tls=f"\n  tls:\n    certFile: {cert}\n    keyFile: {key}")


def mproxy_argv(ctx: Context, role: str, conf: Path, *extra: str) -> list[str]:
    """`mproxy edge` or `mproxy sidecar` on the repo's venv with the config file `conf`."""
    return [str(ctx.python), "-m", "mproxy", role, "--config", str(conf), *extra]


class Reference(TunnelSystem):
    name, label = "reference", "reference (node proxy-packer)"
    describe = ("tests/interop/node relay.js + device.js: telebit-style relay and device on the reference "
                "codec (proxy-packer) and ws, under node")

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.node_dir = ctx.repo / "tests" / "interop" / "node"
        for script in ("relay.js", "device.js"):
            if not (self.node_dir / script).is_file():
                raise BenchError(f"tests/interop/node/{script} is missing (written with the data plane)")
        if not (self.node_dir / "node_modules" / "proxy-packer").is_dir():
            raise BenchError("npm proxy-packer is not installed (run scripts/bootstrap)")
        self.token = secrets.token_hex(16)

    def start_edge(self) -> Proc:
        conf = {"host": "127.0.0.1", "wsPort": self.control, "token": self.token,
                "listeners": [{"port": self.entry, "service": "tcp", "serviceport": self.entry, "name": ""}]}
        path = self.logdir / "relay.json"
        path.write_text(json.dumps(conf))
        # relay.js reads commands on stdin and exits at its end: keep a pipe open.
        return Proc("relay.js", ["node", str(self.node_dir / "relay.js"), str(path)], self.logdir,
                    cwd=self.node_dir, stdin=subprocess.PIPE)

    def edge_ready(self) -> None:
        super().edge_ready()
        wait_port(self.entry, proc=self.edge)

    def start_device(self) -> Proc:
        argv = ["node", str(self.node_dir / "device.js"), "--url", f"ws://127.0.0.1:{self.control}/",
                "--token", self.token, "--port", f"{self.entry}={self.backend_port}", "--quiet"]
        return Proc("device.js", argv, self.logdir, cwd=self.node_dir)


# How every bench mproxy process runs: its metrics port, quiet text logs, a short drain.
RUN_YAML = """\
http:
  listen: "127.0.0.1:{http}"
logging:
  format: text
  level: warning
drainSeconds: 1
"""

# Limits raised far past the scenarios (10,000 idle streams, thousands of new streams a second from one
# address): the benchmark measures the data path, not the abuse limits.
EDGE_YAML = """\
auth:
  secretFile: {secret}
listeners:
  - kind: tcp
    listen: "127.0.0.1:{entry}"
  - kind: tls
    listen: "127.0.0.1:{tls_entry}"
tunnel:
  listen: "127.0.0.1:{control}"
  path: /{tunnel_tls}
limits:
  maxStreamsPerTunnel: 1000000
  maxStreamsPerClient: 1000000
  connectionRate: 1000000
  connectionBurst: 1000000
""" + RUN_YAML

SIDECAR_YAML = """\
edge:
  urls: ["{scheme}://{host}:{control}/"]
  tokenFile: {token_file}{ca_file}
routes:
  - name: bench
    match:
      ports: [{entry}]
    backend:
      host: 127.0.0.1
      port: {backend}
  - name: bench-tls
    match:
      hostnames: [{tls_name}]
      ports: [{tls_entry}]  # else the sidecar would sniff plain streams for a name too
    backend:
      host: 127.0.0.1
      port: {backend}
limits:
  maxStreamsPerTunnel: 1000000
  maxStreamsPerClient: 1000000
""" + RUN_YAML


class Mproxy(TunnelSystem):
    name, label = "mproxy", "mproxy"
    describe = "mproxy edge + mproxy sidecar (Python asyncio, M-PROXY over WebSocket), one tunnel"
    tls = False

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # HTTPS clients come in on an SNI-passthrough listener and are routed by name (extra.py).
        self.tls_entry = free_port()
        self.auth = auth = mproxy_auth(ctx, self.logdir, self.entry, self.tls, TLS_NAME)
        self.edge_conf, self.sidecar_conf = auth.write_configs(
            EDGE_YAML, SIDECAR_YAML, control=self.control, entry=self.entry, backend=backend_port,
            tls_entry=self.tls_entry, tls_name=TLS_NAME)

    def _env(self) -> dict[str, str]:
        """Run with compiled bytecode, as the image does (pip compiles it there): with this environment's
        PYTHONDONTWRITEBYTECODE=1 and an editable install, every spawn would compile mproxy's sources
        first (~90 ms of CPU in the edge restart). The cache is the bench's, never the source tree."""
        # Empty is unset for Python; Proc adds these to the inherited environment.
        pycache = self.ctx.cache / "bench" / "pycache"
        return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(pycache)}

    def start_edge(self) -> Proc:
        argv = mproxy_argv(self.ctx, "edge", self.edge_conf)
        return Proc("mproxy-edge", argv, self.logdir, env=self._env())

    def start_device(self) -> Proc:
        argv = mproxy_argv(self.ctx, "sidecar", self.sidecar_conf)
        return Proc("mproxy-sidecar", argv, self.logdir, env=self._env())


class MproxyWss(Mproxy):
    name, label = "mproxy-wss", "mproxy (wss)"
    describe = "the same over wss:// (tunnel.tls with a private CA, edge.caFile): the production setting"
    tls = True


class MproxyEdges(Mproxy):
    """Three edges, one sidecar holding a tunnel to each (one edge URL per edge: on one machine the edges
    differ by port; in a cluster the headless Service's addresses or a balancer give the same tunnels).
    Clients are spread over the three entry ports (scenarios.spread): connrate and bulk8 split their
    workers and streams over them; the other scenarios use the first edge, as one client would."""

    name, label = "mproxy-3edges", "mproxy, 3 edges"
    describe = ("3 mproxy edges + 1 sidecar with a tunnel to each; clients spread over the 3 edges' entry "
                "ports (new streams, 8 streams), the rest through the first")
    EDGES = 3

    def __init__(self, ctx: Context, backend_port: int) -> None:
        super().__init__(ctx, backend_port)
        self.entries = [self.entry, *(free_port() for _ in range(self.EDGES - 1))]
        self.controls = [self.control, *(free_port() for _ in range(self.EDGES - 1))]
        self.confs = [self.edge_conf]
        for i in range(1, self.EDGES):
            conf = self.logdir / f"edge{i}.yaml"
            conf.write_text(EDGE_YAML.format(**self.auth.edge_fields(), entry=self.entries[i],
                                             tls_entry=free_port(), control=self.controls[i],
                                             http=free_port()))
            self.confs.append(conf)
        # Every edge must grant the sidecar's token: it names the first entry port, the others are
        # listeners with that public port.
        for i, conf in enumerate(self.confs):
            listen = f'listen: "127.0.0.1:{self.entries[i]}"\n'
            conf.write_text(conf.read_text().replace(listen, f"{listen}    publicPort: {self.entry}\n"))
        urls = ", ".join(f'"ws://127.0.0.1:{c}/"' for c in self.controls)
        self.sidecar_conf.write_text(SIDECAR_YAML.format(
            **self.auth.sidecar_fields(), control=self.control, entry=self.entry, backend=backend_port,
            http=free_port(), tls_name=TLS_NAME, tls_entry=self.tls_entry).replace(
            f'urls: ["ws://127.0.0.1:{self.control}/"]', f"urls: [{urls}]"))
        self.others: list[Proc] = []

    def start_edge(self) -> Proc:
        if not self.others:  # the first start; restart_edge() replaces only the first edge
            for i, conf in enumerate(self.confs[1:], start=1):
                argv = mproxy_argv(self.ctx, "edge", conf)
                self.others.append(Proc(f"mproxy-edge{i}", argv, self.logdir))
            for i, proc in enumerate(self.others, start=1):
                wait_port(self.controls[i], proc=proc)
        return super().start_edge()

    def wait_flowing(self, timeout: float) -> None:
        super().wait_flowing(timeout)
        deadline = time.monotonic() + timeout
        for port in self.entries[1:]:
            while not echo_once(port):
                if time.monotonic() > deadline:
                    raise BenchError(f"no traffic through {self.label} entry {port} after {timeout:.0f}s")
                time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        for proc in self.others:
            proc.stop()
        self.others = []


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls for cls in (Direct, Mproxy, MproxyWss, MproxyEdges, Reference, Chisel, Frp, Rathole, Bore)
}


def pids(system: System) -> dict[str, int]:
    """The processes whose memory the idle scenario measures."""
    out = {}
    with contextlib.suppress(AttributeError):
        if system.edge is not None:
            out["edge"] = system.edge.pid
        if system.device is not None:
            out["device"] = system.device.pid
    return out
