"""The edge and the sidecar as containers from the built image (podman, host network, the chart's
securityContext and mount paths), backends outside on 127.0.0.1, and real clients through them:
curl over TLS routed by SNI, curl over HTTP routed by Host, openssl over a raw TCP port, and 20 MiB
each way checked by sha256. Every port is picked by the kernel (port 0); the edge's are read from
its "edge ready" log line."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.conftest import need

from .backends import BIG_SIZE, Backends, start_backends
from .conftest import Containers

pytestmark = [pytest.mark.container, pytest.mark.slow]

NAMES = ["shop.test", "www.shop.test"]
TCP_PUBLIC_PORT = 5050
UID_GID = 65532
READY_LINE = re.compile(r"edge ready: tunnel endpoint on port (\d+), listeners ((?:\w+:\d+(?:, )?)+)")


def private_dir(path: Path) -> Path:
    """A directory the container user reads through its group, as Kubernetes' fsGroup makes
    mounted Secrets and ConfigMaps: root-owned, group 65532, nothing for others."""
    path.mkdir(parents=True)
    os.chown(path, 0, UID_GID)
    path.chmod(0o750)
    return path


def write_private(path: Path, data: str) -> Path:
    path.write_text(data)
    os.chown(path, 0, UID_GID)
    path.chmod(0o640)
    return path


@dataclass
class Stack:
    backends: Backends
    edge: str
    sidecar: str
    tls_port: int
    http_port: int
    tcp_port: int
    first_byte_seconds: float


def edge_ports(containers: Containers, name: str, timeout: float = 30) -> tuple[int, dict[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        logs = containers.logs(name)
        match = READY_LINE.search(logs)
        if match:
            listeners = dict(item.split(":") for item in match.group(2).split(", "))
            return int(match.group(1)), {kind: int(port) for kind, port in listeners.items()}
        assert containers.running(name), f"the edge container exited:\n{logs[-4000:]}"
        assert time.monotonic() < deadline, f"the edge never logged 'edge ready':\n{logs[-4000:]}"
        time.sleep(0.2)


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 10, check=False)


@pytest.fixture
def stack(tmp_path: Path, containers: Containers) -> Iterator[Stack]:
    need(shutil.which("curl"), "curl is not installed")
    need(shutil.which("openssl"), "openssl is not installed")
    image = containers.image
    backends = start_backends(tmp_path, NAMES)
    try:
        edge_secret = private_dir(tmp_path / "edge-secret")
        write_private(edge_secret / "secret", "a-test-secret-of-thirty-two-bytes!\n")
        edge_config = private_dir(tmp_path / "edge-config")
        write_private(edge_config / "edge.yaml", yaml.safe_dump({
            "auth": {"secretFile": "/var/run/mproxy/edge/secret"},
            "listeners": [{"kind": "tls", "listen": "127.0.0.1:0"},
                          {"kind": "http", "listen": "127.0.0.1:0"},
                          {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": TCP_PUBLIC_PORT}],
            "tunnel": {"listen": "127.0.0.1:0"},
            "http": {"listen": "127.0.0.1:0"},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 1,
        }))
        # The token is minted by the image itself, as a user would.
        minted = image.podman("run", "--rm", "--network=none", *containers.security,
                              f"--volume={edge_secret}:/var/run/mproxy/edge:ro", image.ref, "token",
                              "--secret-file", "/var/run/mproxy/edge/secret", "--domain", NAMES[0],
                              "--port", str(TCP_PUBLIC_PORT))
        token = minted.stdout.decode().strip()
        assert token.count(".") == 2, minted

        edge = containers.run("edge", "edge", "--config", "/etc/mproxy/edge.yaml", volumes={
            edge_config: "/etc/mproxy", edge_secret: "/var/run/mproxy/edge"})
        tunnel_port, listeners = edge_ports(containers, edge)

        token_dir = private_dir(tmp_path / "token")
        write_private(token_dir / "token", token)
        sidecar_config = private_dir(tmp_path / "sidecar-config")
        write_private(sidecar_config / "config.yaml", yaml.safe_dump({
            "edge": {"urls": [f"ws://127.0.0.1:{tunnel_port}/"], "connectionsPerUrl": 2,
                     "tokenFile": "/var/run/mproxy/token/token"},
            "routes": [
                {"name": "tls", "match": {"services": ["https"]},
                 "backend": {"host": "127.0.0.1", "port": backends.https_port}},
                {"name": "web", "match": {"services": ["http"]},
                 "backend": {"host": "127.0.0.1", "port": backends.http_port}},
                {"name": "raw", "match": {"services": ["tcp"]},
                 "backend": {"host": "127.0.0.1", "port": backends.https_port}},
            ],
            "http": {"listen": "127.0.0.1:0"},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 1,
        }))
        started = time.monotonic()
        sidecar = containers.run("sidecar", "sidecar", "--config", "/etc/mproxy/config.yaml", volumes={
            sidecar_config: "/etc/mproxy", token_dir: "/var/run/mproxy/token"})

        # Until the sidecar's tunnel is up the edge answers 404 (no tunnel for the name).
        url = f"http://127.0.0.1:{listeners['http']}/"
        deadline = time.monotonic() + 30
        while True:
            request = urllib.request.Request(url, headers={"Host": NAMES[0]})
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert containers.running(sidecar), containers.logs(sidecar)[-4000:]
            assert time.monotonic() < deadline, (
                f"no traffic through the tunnel after 30 s\nedge:\n{containers.logs(edge)[-3000:]}\n"
                f"sidecar:\n{containers.logs(sidecar)[-3000:]}")
            time.sleep(0.1)
        yield Stack(backends, edge, sidecar, listeners["tls"], listeners["http"], listeners["tcp"],
                    time.monotonic() - started)
    finally:
        backends.close()


def test_edge_and_sidecar_containers_carry_tls_http_and_tcp(stack: Stack, containers: Containers,
                                                             tmp_path: Path) -> None:
    print(f"sidecar container start to first byte through the tunnel: {stack.first_byte_seconds:.2f} s")
    ca = str(stack.backends.ca_file)

    # TLS by SNI: passthrough, so curl verifies the backend's own certificate.
    for name in NAMES:
        got = curl("--cacert", ca, "--resolve", f"{name}:{stack.tls_port}:127.0.0.1",
                   f"https://{name}:{stack.tls_port}/")
        assert got.returncode == 0, got.stderr
        assert got.stdout == f"hello https host={name}:{stack.tls_port}".encode(), got.stdout
    # A name no tunnel serves is refused by the edge (TLS alert), never sent to the backend.
    other = curl("--cacert", ca, "--resolve", f"other.test:{stack.tls_port}:127.0.0.1",
                 f"https://other.test:{stack.tls_port}/")
    assert other.returncode != 0 and b"unrecognized name" in other.stderr.lower(), other.stderr

    # HTTP by Host.
    got = curl("-H", "Host: www.shop.test", f"http://127.0.0.1:{stack.http_port}/")
    assert (got.returncode, got.stdout) == (0, b"hello http host=www.shop.test"), got
    refused = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: other.test",
                   f"http://127.0.0.1:{stack.http_port}/")
    assert refused.stdout == b"404", refused

    # Raw TCP: the edge maps the port to the tunnel whose token grants it; openssl talks TLS end to end.
    request = b"GET / HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n"
    sclient = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{stack.tcp_port}", "-servername", NAMES[0],
         "-CAfile", ca, "-verify_return_error", "-quiet"],
        input=request, capture_output=True, timeout=30, check=False)
    assert sclient.stdout.endswith(b"hello https host=raw"), (sclient.stdout, sclient.stderr)

    # 20 MiB each way, checked by sha256: down over TLS, up over HTTP.
    big = tmp_path / "big.bin"
    got = curl("--cacert", ca, "--resolve", f"{NAMES[0]}:{stack.tls_port}:127.0.0.1", "-o", str(big),
               f"https://{NAMES[0]}:{stack.tls_port}/big", timeout=120)
    assert got.returncode == 0, got.stderr
    assert big.stat().st_size == BIG_SIZE
    assert hashlib.sha256(big.read_bytes()).hexdigest() == stack.backends.big_sha256
    got = curl("-H", f"Host: {NAMES[0]}", "--data-binary", f"@{big}", "-H",
               "Content-Type: application/octet-stream", f"http://127.0.0.1:{stack.http_port}/sha256",
               timeout=120)
    assert (got.returncode, got.stdout.decode()) == (0, stack.backends.big_sha256), got.stderr

    # SIGTERM (podman stop) drains and exits 0 as PID 1 in its container, well before the SIGKILL.
    for name in (stack.sidecar, stack.edge):
        started = time.monotonic()
        code = containers.stop(name, timeout=15)
        assert code == 0, f"{name} exited {code}:\n{containers.logs(name)[-3000:]}"
        assert time.monotonic() - started < 12
