"""Backends outside the containers, on 127.0.0.1: an HTTP server and an HTTPS server (the same
handler), each in a thread of the test process.

    GET /          -> "hello <label> host=<Host header>"
    GET /big       -> BIG_SIZE deterministic bytes (their sha256 is Backends.big_sha256)
    POST /sha256   -> the hex sha256 of the request body (streamed, never held whole)
"""

from __future__ import annotations

import hashlib
import random
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mproxy.ca import CertificateAuthority

BIG_SIZE = 20 * 1024 * 1024
CHUNK = 256 * 1024


def big_body() -> bytes:
    """Pseudo-random (incompressible, seeded: the same every run) 20 MiB."""
    return random.Random(13).randbytes(BIG_SIZE)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mproxy-test-backend"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _reply(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        label: str = self.server.label  # type: ignore[attr-defined]
        if self.path == "/big":
            self._reply(self.server.big, "application/octet-stream")  # type: ignore[attr-defined]
        else:
            self._reply(f"hello {label} host={self.headers.get('Host', '')}".encode())

    def do_POST(self) -> None:
        remaining = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while remaining:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
        self._reply(digest.hexdigest().encode())


@dataclass
class Backends:
    http_port: int
    https_port: int
    ca_file: Path
    big_sha256: str
    servers: list[ThreadingHTTPServer]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _serve(label: str, big: bytes, context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.label = label  # type: ignore[attr-defined]
    server.big = big  # type: ignore[attr-defined]
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"backend-{label}", daemon=True).start()
    return server


def start_backends(directory: Path, names: list[str]) -> Backends:
    """The two servers; the HTTPS one presents a certificate for `names` from a fresh CA."""
    ca = CertificateAuthority.create("mproxy container-test CA", days=1)
    ca_file = ca.write_cert(directory / "ca.crt")
    context = ca.issue(names, days=1).server_context(directory, "backend")
    big = big_body()
    http = _serve("http", big)
    https = _serve("https", big, context)
    return Backends(http_port=http.server_address[1], https_port=https.server_address[1],
                    ca_file=ca_file, big_sha256=hashlib.sha256(big).hexdigest(), servers=[http, https])
