"""Real mproxy processes on loopback for Prometheus to scrape: a backend, an edge relay and a sidecar.

Started with the project's own command line (`mproxy token`, `mproxy edge`, `mproxy sidecar`), exactly as
an operator would run them. Traffic is plain HTTP through the edge's HTTP listener; some of it fails on
purpose so that the error panels have something to show:
- Host app.test     -> route "app"  -> a live backend (streams, bytes, latency, two client addresses);
- Host dead.test    -> route "dead" -> a closed port (a stream error on the sidecar);
- Host nobody.test  -> no tunnel grants it (a reject with reason no_tunnel on the edge).
The sidecar also dials a second edge URL where nothing listens (a disconnected tunnel next to a connected
one, and failed dials counted as reconnects). A second sidecar dials the edge with a token signed by another
secret: the edge refuses it (bad_signature) and that pod never connects (what MproxyTunnelDown,
MproxyTunnelUnavailable and MproxyEdgeTokensRefused are about). The edge forwards between edges (`peers`)
with one peer address where nothing listens (MproxyEdgePeerUnreachable, the forward and peer panels).
The operator needs a Kubernetes API server to run (tests/k8s starts one; too slow here), so its own metrics
registry is served alone, by prometheus_client, as its /metrics would: real names, real initial series.
"""

from __future__ import annotations

import http.client
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tests.ports import free_port
from tests.prometheus.harness import wait_for
from tests.prometheus.procs import Proc, ProcGroup

SECRET = b"prometheus-test-secret-0123456789abcdef"
CLIENT_ADDRESSES = ("127.0.0.1", "127.0.0.2")  # two clients: per-client series, and evictions into "other"


def mproxy_argv() -> list[str]:
    exe = shutil.which("mproxy", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mproxy"]


@dataclass
class Stack:
    group: ProcGroup
    edge_http_port: int = 0
    targets: dict[str, list[str]] = field(default_factory=dict)  # job -> ["127.0.0.1:port"]
    tunnels: dict[str, str] = field(default_factory=dict)  # sidecar target -> its Tunnel's name

    def check_alive(self) -> None:
        for proc in self.group.procs:
            proc.check_alive()

    def metrics_urls(self) -> list[str]:
        return [f"http://{t}/metrics" for targets in self.targets.values() for t in targets]

    def request(self, host: str, path: str = "/", source: str = "127.0.0.1") -> int:
        """One HTTP request through the edge; the status code, or 0 when the connection was dropped."""
        conn = http.client.HTTPConnection("127.0.0.1", self.edge_http_port, timeout=5,
                                          source_address=(source, 0))
        try:
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def drive_traffic(self) -> None:
        """One burst. The sidecar labels one client at a time (maxClients 1), so each address evicts the
        other into client="other"; the failing request goes first, so that its error is folded into
        "other" by the next address and, in the second burst, moves that series (what rate() sees)."""
        assert self.request("dead.test", "/", CLIENT_ADDRESSES[0]) != 200
        for source in CLIENT_ADDRESSES:
            for _ in range(3):
                status = self.request("app.test", "/", source)
                assert status == 200, f"GET app.test through the edge from {source} answered {status}"
        assert self.request("nobody.test") != 200


_OPERATOR_METRICS = """
import sys, time
from prometheus_client import start_http_server
from mproxy_operator import metrics
start_http_server(int(sys.argv[1]), addr="127.0.0.1", registry=metrics.REGISTRY)
print("serving", flush=True)
while True:
    time.sleep(3600)
"""


def _wait_line(proc: Proc, pattern: str, timeout: float = 20) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        proc.check_alive()
        return re.search(pattern, proc.log.read_text(errors="replace"))

    match: re.Match[str] = wait_for(found, timeout, f"{proc.name} to log {pattern!r}")
    return match


def _write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_stack(group: ProcGroup) -> Stack:
    work = group.log_dir
    mproxy = mproxy_argv()
    stack = Stack(group)

    # The backend: a real HTTP server (the standard library's), and a port where nothing listens.
    backend_port, dead_port = free_port(), free_port()
    group.start("backend", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(backend_port),
                            "--directory", str(work)])

    secret_file = work / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    edge_config = _write_yaml(work / "edge.yaml", {
        "auth": {"secretFile": str(secret_file)},
        "listeners": [{"kind": "http", "listen": "127.0.0.1:0"}],
        "tunnel": {"listen": "127.0.0.1:0", "path": "/tunnel"},
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 5, "authTimeoutSeconds": 5},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 0,
        # Forwarding between edges on, as the chart has it: the edge itself (skipped: its own id) and a
        # peer address where nothing listens (known, never reachable: MproxyEdgePeerUnreachable pending).
        "peers": {"listen": "127.0.0.1:0", "addresses": ["127.0.0.1", "127.0.0.2"]},
    })
    edge = group.start("edge", [*mproxy, "edge", "--config", str(edge_config)])
    ready = _wait_line(edge, r"mproxy edge ready: tunnel=(\d+) http=(\d+) http=(\d+)")
    tunnel_port, edge_metrics_port, stack.edge_http_port = (int(g) for g in ready.groups())
    stack.targets["mproxy-edge"] = [f"127.0.0.1:{edge_metrics_port}"]

    token = group.run("token", [*mproxy, "token", "--secret-file", str(secret_file),
                                "--domain", "app.test", "--domain", "dead.test"])
    token_file = work / "token"
    token_file.write_text(token.strip() + "\n")
    other_secret = work / "other-secret"
    other_secret.write_bytes(SECRET[::-1] + b"\n")
    bad_token = group.run("token-bad", [*mproxy, "token", "--secret-file", str(other_secret),
                                        "--domain", "app.test"])
    bad_token_file = work / "bad-token"
    bad_token_file.write_text(bad_token.strip() + "\n")
    dead_edge = f"ws://127.0.0.1:{free_port()}/tunnel"
    routes = [
        {"name": "app", "match": {"hostnames": ["app.test"]},
         "backend": {"host": "127.0.0.1", "port": backend_port}},
        {"name": "dead", "match": {"hostnames": ["dead.test"]},
         "backend": {"host": "127.0.0.1", "port": dead_port, "connectTimeoutSeconds": 2}},
    ]
    edge_url = f"ws://127.0.0.1:{tunnel_port}/tunnel"
    sidecars = {  # process name -> (Tunnel name, edge URLs, token)
        "sidecar": ("shop", [edge_url, dead_edge], token_file),
        "sidecar-lonely": ("lonely", [edge_url], bad_token_file),
    }
    stack.targets["mproxy-sidecar"] = []
    for name, (tunnel, urls, tokens) in sidecars.items():
        metrics_port = free_port()
        config = _write_yaml(work / f"{name}.yaml", {
            "edge": {"urls": urls, "tokenFile": str(tokens)},
            "routes": routes,
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 5},
            "reconnect": {"initialSeconds": 0.2, "maxSeconds": 1},
            # One labelled client at a time: the second address evicts the first into client="other".
            "metrics": {"labels": "client", "maxClients": 1},
            "http": {"listen": f"127.0.0.1:{metrics_port}"},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 0,
        })
        group.start(name, [*mproxy, "sidecar", "--config", str(config)])
        stack.targets["mproxy-sidecar"].append(f"127.0.0.1:{metrics_port}")
        stack.tunnels[f"127.0.0.1:{metrics_port}"] = tunnel

    operator_port = free_port()
    operator = group.start("operator-metrics", [sys.executable, "-c", _OPERATOR_METRICS, str(operator_port)])
    _wait_line(operator, "serving")
    stack.targets["mproxy-operator"] = [f"127.0.0.1:{operator_port}"]

    # Ready once the edge routes app.test through the tunnel to the backend.
    def routed() -> bool:
        stack.check_alive()  # raises, with the logs, if a process died
        return stack.request("app.test") == 200

    wait_for(routed, 20, "app.test to answer 200 through edge, tunnel and sidecar")
    return stack
