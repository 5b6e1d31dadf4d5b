"""Run the upstream Gateway API conformance suite against mproxy: `scripts/conformance` (on demand).

What runs, all on this machine, no containers:
- the test control plane (tests/k8s/conftest.py: kube-apiserver, controllers, scheduler, kwok) with the
  Gateway API v1.6.3 standard CRDs;
- `mproxy operator --gateway-api` and the GatewayClass `mproxy` (parameters: the edge below);
- a real `mproxy edge` on a pool of loopback addresses (127.0.77.1-16), each its own listener group
  (docs/edge.md, "Listener groups") with a `tls` listener on each TLS/HTTPS port, a `tcp` listener on
  each TCP port, a `udp` listener on each UDP port and an `http` listener on each HTTP port the suite's
  Gateways use; the GatewayClass's
  parameters carry that pool (`listenerGroups`), so each Gateway gets one address of its own;
- one real connector (`mproxy sidecar`) per Gateway, serving the config the operator rendered into that
  Gateway's ConfigMap (its routes, and `edge.listenerGroups`: its group), started and stopped as
  Gateways come and go (the connector Deployments' pods are kwok's, so they run nothing);
- a real echo-basic process (built from the suite's source) for each Ready TCP, UDP or HTTP echo pod
  of the suite, and for the suite's `coredns` pod (UDPRoute) a minimal DNS responder
  (dns_responder.py: coredns is an image this machine cannot run).

Two stand-ins for what a cluster's network would do, both here and nowhere in the operator: the
connector's backend `<svc>.<ns>.svc.cluster.local:<port>` is rewritten to the loopback address of the
echo-basic process serving one Ready pod of that Service (no cluster DNS, no kube-proxy here), and the
connectors' certificate paths point at local copies of the Gateways' certs Secrets. One edge token
grants every name and port; the listener groups keep each Gateway's clients on its own connector.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tests.k8s.conftest import BUILD_SH, KubeCluster, _die_with_parent  # noqa: E402

from mproxy_operator.gateway_api.addresses import GROUP_ANNOTATION  # noqa: E402

CACHE = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy"))
GW_CACHE = CACHE / "gateway-api"
HERE = Path(__file__).resolve().parent
# The edge's address pool: 16 consecutive loopback addresses from MPROXY_CONFORMANCE_EDGE_IP (another
# start keeps a second run apart), one listener group each (GatewayClass parameters `listenerGroups`).
EDGE_IP = os.environ.get("MPROXY_CONFORMANCE_EDGE_IP", "127.0.77.1")
POOL = [str(ipaddress.IPv4Address(EDGE_IP) + i) for i in range(16)]
CLASS = "mproxy"
GROUP = "gateway.networking.k8s.io"
LABEL = "mproxy.dev/gateway-api-gateway"


def group_of(ip: str) -> str:
    return "gw-" + ip.rsplit(".", 1)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_next_echo_port = 20000


def echo_port() -> int:
    """A port for an echo-basic process, below the kernel's ephemeral range: echo-basic listens on all
    addresses, and an ephemeral port may at any moment be the local end of some client connection
    (the control plane makes hundreds), which makes that bind fail."""
    global _next_echo_port
    while _next_echo_port < 32000:
        port, _next_echo_port = _next_echo_port, _next_echo_port + 1
        with socket.socket(socket.AF_INET6) as s:
            try:
                s.bind(("::", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left for echo-basic in 20000-32000")


def suite_dir() -> Path:
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api/conformance"],
        cwd=HERE, capture_output=True, text=True, check=True,
        env={**os.environ, "GOMODCACHE": str(CACHE / "k8s" / "gomod"), "GOFLAGS": "-mod=readonly",
             "GOTOOLCHAIN": "local"},
    )
    return Path(out.stdout.strip())


def listener_ports(suite: Path) -> tuple[set[int], set[int], set[int], set[str]]:
    """The edge listeners the suite's Gateways need: `tls` ports (TLS and HTTPS listeners: the edge
    passes both through by SNI), `tcp` ports, `http` ports, and the DNS suffixes of every listener
    hostname and route hostname (what the edge token must grant)."""
    tls, tcp, http, names = set(), set(), set(), set()
    files = [suite / "base" / "manifests.yaml", *sorted((suite / "tests").glob("*.yaml"))]
    for f in files:
        if not f.exists():
            continue
        for doc in yaml.safe_load_all(f.read_text().replace("{GATEWAY_CLASS_NAME}", CLASS)):
            if not isinstance(doc, dict):
                continue
            spec = doc.get("spec") or {}
            if doc.get("kind") == "Gateway":
                for lst in spec.get("listeners") or []:
                    protocol = lst.get("protocol")
                    if protocol in ("TLS", "HTTPS"):
                        tls.add(int(lst["port"]))
                    elif protocol == "TCP":
                        tcp.add(int(lst["port"]))
                    elif protocol == "HTTP":
                        http.add(int(lst["port"]))
                    if lst.get("hostname"):
                        names.add(str(lst["hostname"]))
            if doc.get("kind") in ("TLSRoute", "HTTPRoute"):
                names.update(str(h) for h in spec.get("hostnames") or [])
    suffixes = {".".join(n.lstrip("*.").split(".")[-2:]) for n in names if n.strip("*.")}
    # HTTP requests without a Host name carry the Gateway's address: the edge looks it up as a name.
    suffixes.update(POOL)
    return tls, tcp - tls, http - tls - tcp, suffixes


def udp_listener_ports(suite: Path) -> set[int]:
    """The UDP ports of the suite's Gateways' listeners (an edge `udp` listener each)."""
    out: set[int] = set()
    files = [suite / "base" / "manifests.yaml", *sorted((suite / "tests").glob("*.yaml"))]
    for f in files:
        if not f.exists():
            continue
        for doc in yaml.safe_load_all(f.read_text().replace("{GATEWAY_CLASS_NAME}", CLASS)):
            if isinstance(doc, dict) and doc.get("kind") == "Gateway":
                out.update(int(lst["port"]) for lst in (doc.get("spec") or {}).get("listeners") or []
                           if lst.get("protocol") == "UDP")
    return out


def udp_port() -> int:
    """A free UDP port for a UDP echo backend (echo-basic binds it on all addresses), from the same
    range below the ephemeral ports as echo_port()."""
    global _next_echo_port
    while _next_echo_port < 32000:
        port, _next_echo_port = _next_echo_port, _next_echo_port + 1
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("::", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left for a UDP echo backend in 20000-32000")


class Harness:
    def __init__(self, work: Path, cluster: KubeCluster, http_echoes: bool = False) -> None:
        self.work = work
        self.cluster = cluster
        self.http_echoes = http_echoes  # echo-basic in HTTP mode too (profile GATEWAY-HTTP)
        self.certs = work / "certs"
        self.cert_cache: dict[tuple[str, str], dict[str, str]] = {}
        self.mproxy = shutil.which("mproxy") or str(Path(sys.executable).parent / "mproxy")
        self.echo_bin = GW_CACHE / "bin" / "echo-basic"
        self.echoes: dict[tuple[str, str], tuple[subprocess.Popen[bytes], dict[int, int]]] = {}
        self.stop = threading.Event()
        self.connectors: dict[tuple[str, str], Connector] = {}
        self.lock = threading.Lock()  # the loop's round against close()
        self.tunnel_port = free_port()
        self.errors: list[str] = []

    # -- the fixed parts -------------------------------------------------------------------------
    def start_edge(
        self, tls: set[int], tcp: set[int], http: set[int], domains: set[str], udp: set[int] | None = None
    ) -> None:
        udp = udp or set()
        secret = self.work / "edge-secret"
        secret.write_text(os.urandom(24).hex())
        # tlsRefusal close: the suite wants a refused TLS connection closed, not a TLS alert (docs/edge.md).
        listeners: list[dict[str, Any]] = []
        for ip in POOL:  # every port on every address of the pool, each address its own group
            g = group_of(ip)
            listeners += [{"kind": "tls", "listen": f"{ip}:{p}", "group": g, "tlsRefusal": "close"}
                          for p in sorted(tls)]
            listeners += [{"kind": "tcp", "listen": f"{ip}:{p}", "group": g} for p in sorted(tcp)]
            listeners += [{"kind": "http", "listen": f"{ip}:{p}", "group": g} for p in sorted(http)]
            # Each probe of the suite is a new client (a new source port) that sends once: a short idle
            # timer ends its stream soon after (UDPRouteWeightedRouting makes 500 per attempt).
            listeners += [{"kind": "udp", "listen": f"{ip}:{p}", "group": g, "idleTimeoutSeconds": 5}
                          for p in sorted(udp)]
        config = {
            "id": "edge-0",
            "auth": {"secretFile": str(secret)},
            "listeners": listeners,
            "tunnel": {"listen": f"127.0.0.1:{self.tunnel_port}", "path": "/"},
            # Every client of the suite is 127.0.0.1: the per-address limits would refuse its bursts
            # (TCPRouteWeightedRouting opens hundreds of connections within a second).
            "limits": {"connectionRate": 100000, "connectionBurst": 100000, "maxStreamsPerClient": 100000,
                       "maxStreamsPerTunnel": 100000},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 1,
        }
        (self.work / "edge.yaml").write_text(yaml.safe_dump(config))
        args = ["token", "--secret-file", str(secret), "--ttl", "1d"]
        args += [a for d in sorted(domains) for a in ("--domain", d)]
        args += [a for p in sorted(tcp | udp) for a in ("--port", str(p))]  # a port grant covers UDP too
        # The class's one token names every group of the pool: a connector asks for its Gateway's group
        # only and is then granted everything on that group's listeners (docs/edge.md, "A group is a
        # grant"), so a Host or SNI no route serves reaches the Gateway's connector, which answers 404.
        args += [a for ip in POOL for a in ("--listener-group", group_of(ip))]
        minted = subprocess.run([self.mproxy, *args], capture_output=True, text=True, check=True)
        token = minted.stdout.strip()
        (self.work / "token").write_text(token)
        self.cluster._spawn("edge", "edge", "--config", str(self.work / "edge.yaml"), exe=Path(self.mproxy))

    def start_operator(self) -> None:
        self.cluster._spawn(
            "operator", "operator", "--kubeconfig", str(self.cluster.kubeconfig), "--standalone",
            "--gateway-api", "--namespace", "default", "--webhook-listen", f"127.0.0.1:{free_port()}",
            "--http-listen", f"127.0.0.1:{free_port()}", "--status-interval", "2", "--log-format", "text",
            exe=Path(self.mproxy),
        )
        params = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "mproxy-edge", "namespace": "default"},
            "data": {"edgeURLs": f"ws://127.0.0.1:{self.tunnel_port}/", "tokenSecret": "edge-token",
                     "listenerGroups": yaml.safe_dump({group_of(ip): [ip] for ip in POOL}, sort_keys=False),
                     "replicas": "1"},
        }
        gc = {
            "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": CLASS},
            "spec": {"controllerName": "mproxy.dev/gateway-controller",
                     "parametersRef": {"group": "", "kind": "ConfigMap", "name": "mproxy-edge",
                                       "namespace": "default"}},
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([params, gc]))
        # The suite reads the features it tests from the class's status: wait until it is there.
        self.cluster.wait_for(
            lambda: (self._json("get", "gatewayclass", CLASS).get("status") or {}).get("supportedFeatures"),
            timeout=60, what="GatewayClass mproxy Accepted with its supportedFeatures",
        )

    # -- the stand-ins, refreshed every second ---------------------------------------------------
    def loop(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                if self.stop.is_set():
                    return
                try:
                    self.sync_echoes()
                    self.sync_connectors()
                except Exception as exc:  # keep going: the suite's own checks will show what broke
                    self.errors.append(repr(exc))

    def _json(self, *args: str) -> Any:
        res = self.cluster.kubectl(*args, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else {"items": []}

    def sync_echoes(self) -> None:
        seen = set()
        for pod in self._json("get", "pods", "-A")["items"]:
            meta, spec = pod["metadata"], pod["spec"]
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])
            ours = meta["namespace"].startswith("gateway-conformance")
            if not ready or meta.get("deletionTimestamp") or not ours:
                continue
            (c,) = spec["containers"][:1] or [{}]
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            dns = "coredns" in str(c.get("image"))  # the suite's UDPRoute backend: a stand-in responder
            if "echo-basic" not in str(c.get("image")) and not dns:
                continue
            tcp_mode = env.get("TCP_ECHO_SERVER") == "1"
            udp_mode = env.get("UDP_ECHO_SERVER") == "1"
            http_mode = not any(env.get(f"{k}_ECHO_SERVER") for k in ("TCP", "UDP", "GRPC"))
            if not dns and not (tcp_mode or udp_mode or (http_mode and self.http_echoes)):
                continue
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            if key in self.echoes and self.echoes[key][0].poll() is not None:
                self.echoes.pop(key)  # it exited: start it again
            if key not in self.echoes:
                started = self._start_dns(pod) if dns else self._start_echo(pod, env)
                if started is not None:
                    self.echoes[key] = started
        for key in set(self.echoes) - seen:
            proc, _ports = self.echoes.pop(key)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _start_echo(
        self, pod: dict[str, Any], env: dict[str, Any]
    ) -> tuple[subprocess.Popen[bytes], dict[int, int]] | None:
        """None while the pod's Secret volume cannot be filled yet (kwok marks pods Ready before the
        suite has created their Secrets; echo-basic without its certificate would hang)."""
        meta = pod["metadata"]
        if env.get("UDP_ECHO_SERVER") == "1":  # UDP_PORT (8080 by default), one JSON reply per datagram
            port = udp_port()
            proc = self._spawn_echo(pod, [str(self.echo_bin)], {
                "UDP_ECHO_SERVER": "1", "UDP_PORT": str(port),
                "SERVICE_NAME": str(env.get("SERVICE_NAME") or ""),
            })
            return proc, {int(env.get("UDP_PORT") or 8080): port}
        d = self.work / "echo" / f"{meta['namespace']}-{meta['name']}"
        d.mkdir(parents=True, exist_ok=True)
        tcp_mode = env.get("TCP_ECHO_SERVER") == "1"
        tcp_port, tls_port, h2c_port = echo_port(), echo_port(), echo_port()
        run_env = {"POD_NAME": meta["name"], "NAMESPACE": meta["namespace"], "PATH": os.environ["PATH"]}
        if tcp_mode:
            run_env.update(TCP_ECHO_SERVER="1", TCP_PORT=str(tcp_port), TLS_PORT=str(tls_port))
        else:  # HTTP mode: HTTP_PORT, H2C_PORT, and HTTPS_PORT when it has a certificate
            run_env.update(HTTP_PORT=str(tcp_port), HTTPS_PORT=str(tls_port), H2C_PORT=str(h2c_port))
        for vol in pod["spec"].get("volumes") or []:
            secret = (vol.get("secret") or {}).get("secretName")
            if not secret:
                continue
            data = self._json("get", "secret", secret, "-n", meta["namespace"]).get("data") or {}
            for item in vol["secret"].get("items") or []:
                if item["key"] not in data:
                    return None
                (d / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
            run_env["TLS_SERVER_CERT"] = str(d / "crt")
            # The TCP echo server reads TLS_SERVER_PRIV_KEY, the HTTP one TLS_SERVER_PRIVKEY.
            run_env["TLS_SERVER_PRIV_KEY" if tcp_mode else "TLS_SERVER_PRIVKEY"] = str(d / "key")
        log = (self.cluster.log_dir / f"echo-{meta['namespace']}-{meta['name']}.log").open("ab")
        proc = subprocess.Popen([str(self.echo_bin)], env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        # The pod's ports (the echo-basic defaults unless its env says otherwise) -> this process's.
        if tcp_mode:
            ports = {int(env.get("TCP_PORT") or 3000): tcp_port, int(env.get("TLS_PORT") or 8443): tls_port}
        else:
            ports = {int(env.get("HTTP_PORT") or 3000): tcp_port,
                     int(env.get("HTTPS_PORT") or 8443): tls_port,
                     int(env.get("H2C_PORT") or 3001): h2c_port}
        return proc, ports

    def _spawn_echo(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        meta = pod["metadata"]
        run_env = {"POD_NAME": meta["name"], "NAMESPACE": meta["namespace"], "PATH": os.environ["PATH"],
                   **env}
        with (self.cluster.log_dir / f"echo-{meta['namespace']}-{meta['name']}.log").open("ab") as log:
            return subprocess.Popen(argv, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def _start_dns(self, pod: dict[str, Any]) -> tuple[subprocess.Popen[bytes], dict[int, int]]:
        """The suite's coredns pod (UDP 53): dns_responder.py on a free UDP port."""
        port = udp_port()
        proc = self._spawn_echo(pod, [sys.executable, str(HERE / "dns_responder.py"), str(port)], {})
        return proc, {53: port}

    def _backend(self, host: str, port: int) -> tuple[str, int]:
        m = re.match(r"^([^.]+)\.([^.]+)\.svc\.cluster\.local$", host)
        if not m:
            return host, port
        svc = self._json("get", "service", m.group(1), "-n", m.group(2))
        target: Any = None
        headless = (svc.get("spec") or {}).get("clusterIP") == "None"
        for p in (svc.get("spec") or {}).get("ports") or []:
            # A headless Service's backends are dialled on the target port (the operator renders it).
            if (p.get("targetPort", p.get("port")) if headless else p.get("port")) == port:
                target = p.get("targetPort", p.get("port"))
        selector = (svc.get("spec") or {}).get("selector") or {}
        if target is None or not selector:
            return "127.0.0.1", 1  # nothing serves it: the connection is refused
        pods = self._json("get", "pods", "-n", m.group(2), "-l",
                          ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            served = self.echoes.get((m.group(2), pod["metadata"]["name"]))
            if served and isinstance(target, int) and target in served[1]:
                return "127.0.0.1", served[1][target]
        return "127.0.0.1", 1

    def _rewrite(self, backend: dict[str, Any]) -> None:
        if "host" in backend:  # not a refused share ({weight, refuse} / {weight, status})
            backend["host"], backend["port"] = self._backend(backend["host"], backend["port"])

    def _cert_files(self, ns: str, gw: str) -> dict[str, str]:
        """The Gateway's certs Secret (what its connector pod mounts at /var/run/mproxy/certs) as files
        here: mounted path -> local path."""
        secret = self._json("get", "secret", f"mproxy-gateway-{gw}-certs", "-n", ns)
        if not secret.get("data"):  # not there yet, or kubectl failed this round: the last good files
            return self.cert_cache.get((ns, gw), {})
        d = self.certs / f"{ns}.{gw}"
        d.mkdir(parents=True, exist_ok=True)
        out = {}
        for key, value in (secret.get("data") or {}).items():
            path = d / key
            data = base64.b64decode(value)
            if not path.exists() or path.read_bytes() != data:
                tmp = path.with_suffix(".new")
                tmp.write_bytes(data)
                tmp.chmod(0o600)
                tmp.replace(path)
            out[f"/var/run/mproxy/certs/{key}"] = str(path)
        self.cert_cache[(ns, gw)] = out
        return out

    def connector_config(self, cm: dict[str, Any]) -> dict[str, Any] | None:
        """The config of one Gateway's connector: the operator's, with the backends rewritten to the
        echo-basic processes and the certificate paths to local copies; None while the Gateway holds no
        listener group (the operator runs no connector for it then)."""
        config = yaml.safe_load(cm["data"]["config.yaml"])
        gw, ns = cm["metadata"]["labels"][LABEL], cm["metadata"]["namespace"]
        groups = (config.get("edge") or {}).get("listenerGroups") or []
        if not groups or GROUP_ANNOTATION not in (cm["metadata"].get("annotations") or {}):
            return None
        for r in config.get("routes") or []:
            for backend in [r["backend"]] if "backend" in r else r.get("backends") or []:
                self._rewrite(backend)
        files = self._cert_files(ns, gw) if config.get("httpRouters") else {}
        routes, routers = config.get("routes") or [], []
        for router in config.get("httpRouters") or []:
            if router.get("tls"):
                # Only certificates already materialised here (the certs Secret is read once per
                # round): a path the connector cannot load would make it refuse the whole config.
                certs = [{"certFile": files[c["certFile"]], "keyFile": files[c["keyFile"]]}
                         for c in router["tls"].get("certificates") or []
                         if c["certFile"] in files and c["keyFile"] in files]
                if not certs:
                    routes = [r for r in routes if r.get("http") != router["name"]]
                    continue
                router["tls"]["certificates"] = certs
            for route in router.get("routes") or []:
                for rule in route.get("rules") or []:
                    for backend in rule.get("backends") or []:
                        self._rewrite(backend)
            routers.append(router)
        return {
            "edge": {"urls": [f"ws://127.0.0.1:{self.tunnel_port}/"], "tokenFile": str(self.work / "token"),
                     "listenerGroups": groups},
            "routes": routes,
            **({"httpRouters": routers} if routers else {}),
            # every client is 127.0.0.1 (the edge's limits); UDP clients linger until their idle timer
            "limits": {"maxStreamsPerClient": 100000, "maxStreamsPerTunnel": 100000},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 1,
        }

    def sync_connectors(self) -> None:
        """One `mproxy sidecar` per Gateway that holds a listener group; its config file is rewritten
        when the operator's changes (the sidecar reloads routes), and it is restarted when its group
        changes and stopped when the Gateway is gone."""
        wanted = {}
        gateways = {(g["metadata"]["namespace"], g["metadata"]["name"])
                    for g in self._json("get", "gateways", "-A")["items"]
                    if not g["metadata"].get("deletionTimestamp")}
        for cm in self._json("get", "configmaps", "-A", "-l", LABEL)["items"]:
            key = (cm["metadata"]["namespace"], cm["metadata"]["labels"][LABEL])
            if key not in gateways:
                continue  # its Gateway is gone; the ConfigMap goes with it
            config = self.connector_config(cm)
            if config is not None:
                wanted[key] = config
        for key in set(self.connectors) - set(wanted):
            self.connectors.pop(key).stop()
        for key, config in wanted.items():
            conn = self.connectors.get(key)
            if conn is not None and (conn.groups != config["edge"]["listenerGroups"] or not conn.alive()):
                self.connectors.pop(key).stop()
                conn = None
            if conn is None:
                conn = self.connectors[key] = Connector(
                    self.work / "connectors" / f"{key[0]}.{key[1]}.yaml",
                    self.cluster.log_dir / f"connector-{key[0]}.{key[1]}.log",
                    list(config["edge"]["listenerGroups"]), free_port(),
                )
            conn.write({**config, "http": {"listen": f"127.0.0.1:{conn.http_port}"}})
            conn.start(self.mproxy, self.cluster.env())

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            for conn in self.connectors.values():
                conn.stop()
            for proc, _ports in self.echoes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Connector:
    """One Gateway's `mproxy sidecar`: its config file, log and process."""

    def __init__(self, config_path: Path, log: Path, groups: list[str], http_port: int) -> None:
        self.config_path, self.log, self.groups, self.http_port = config_path, log, groups, http_port
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config)
        if self.config_path.exists() and self.config_path.read_text() == text:
            return
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def start(self, mproxy: str, env: dict[str, str]) -> None:
        if self.proc is not None:
            return
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [mproxy, "sidecar", "--config", str(self.config_path)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env={**env, "KUBECONFIG": ""},
                start_new_session=True, preexec_fn=_die_with_parent,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def summarize(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    out = {}
    for outcome in ("PASS", "FAIL", "SKIP"):
        # Top-level conformance tests are TestConformance/<ShortName>; their subtests have another "/".
        out[outcome] = len(re.findall(rf"^\s*--- {outcome}: TestConformance/[^/\s]+ ", text, re.M))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="GATEWAY-TLS,GATEWAY-TCP,GATEWAY-UDP,GATEWAY-HTTP")
    ap.add_argument("--run-test", default="", help="one test by its ShortName (default: all of the profiles)")
    ap.add_argument("--match", default="",
                    help="only the tests whose ShortName matches this Go regexp, e.g. ^TLSRoute (-test.run)")
    ap.add_argument("--report", default=str(REPO / "docs" / "conformance" / "mproxy-report.yaml"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = ap.parse_args()

    for cmd in ([str(BUILD_SH), "--check"], [str(HERE / "build.sh"), "--conformance"]):
        if subprocess.run(cmd, check=False).returncode != 0:
            print(f"conformance: `{' '.join(cmd)}` failed; build the control plane first", file=sys.stderr)
            return 1
    suite = suite_dir()
    tls, tcp, http, domains = listener_ports(suite)
    work = Path(tempfile.mkdtemp(prefix="mproxy-conformance-"))
    cluster = KubeCluster(work_dir=work / "k8s", log_dir=work / "logs")
    harness: Harness | None = None
    started = time.monotonic()
    try:
        cluster.start()
        crds = GW_CACHE / "crds" / "standard"
        cluster.kubectl("apply", "--server-side", "-f", str(crds))
        for crd in ("gatewayclasses", "gateways", "tlsroutes", "tcproutes", "udproutes", "httproutes",
                    "referencegrants"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.{GROUP}", "--timeout=60s")
        # HTTP echo backends always: the suite runs every test whose features the GatewayClass claims
        # (HTTPRoute once the connector has its HTTP router), whatever the profiles.
        harness = Harness(work, cluster, http_echoes=True)
        harness.start_edge(tls, tcp, http, domains, udp_listener_ports(suite))
        harness.start_operator()
        threading.Thread(target=harness.loop, daemon=True).start()
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        log = cluster.log_dir / "conformance.log"
        cmd = [
            str(GW_CACHE / "bin" / "conformance.test"), "-test.v", "-test.timeout=60m",
            f"-test.run=TestConformance/{args.match}" if args.match else "-test.run=TestConformance",
            f"-gateway-class={CLASS}", f"-conformance-profiles={args.profiles}",
            "-organization=mproxy", "-project=mproxy", "-url=https://github.com/mproxy/mproxy",
            "-version=main", "-contact=@mproxy/maintainers", f"-report-output={report}",
            "-disable-parallel-tests", "-cleanup-base-resources=true",
        ]
        if args.run_test:
            cmd.append(f"-run-test={args.run_test}")
        print(f"conformance: {' '.join(cmd[:1])} ... (log: {log})", flush=True)
        t0 = time.monotonic()
        with log.open("wb") as out:
            rc = subprocess.run(cmd, cwd=suite, env=cluster.env(), stdout=out, stderr=subprocess.STDOUT,
                                check=False).returncode
        took = time.monotonic() - t0
        counts = summarize(log)
        print(f"conformance: exit {rc} in {took:.0f} s (all: {time.monotonic() - started:.0f} s); "
              f"tests {sum(counts.values())}: {counts['PASS']} passed, {counts['FAIL']} failed, "
              f"{counts['SKIP']} skipped; report: {report}")
        for line in log.read_text(errors="replace").splitlines():
            if re.match(r"^\s*--- FAIL: TestConformance/[^/\s]+ ", line):
                print("  " + line.strip())
        if harness.errors:
            print(f"conformance: harness errors (first 3): {harness.errors[:3]}")
        return 0 if rc == 0 else 1
    finally:
        if harness is not None:
            harness.close()
        cluster.stop()
        if args.keep:
            print(f"conformance: work directory kept: {work}")
        else:
            shutil.rmtree(work / "k8s", ignore_errors=True)
            print(f"conformance: logs kept in {work / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
