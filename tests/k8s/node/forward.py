"""A TCP forwarder between this network namespace (the host's, where the test control plane listens on
127.0.0.1) and the real node's namespace (where the kubelet, the CNI bridge and every pod address are),
so that nothing but loopback is ever bound on the host.

    python forward.py NETNS_PATH SPEC [SPEC...]
    SPEC = SIDE:HOST:PORT=SIDE:HOST:PORT     listen on the left, connect to the right
    SIDE = ns (NETNS_PATH) | host (this namespace)

e.g. `ns:127.0.0.1:6443=host:127.0.0.1:6443` (the kubelet reaches the apiserver) or
`host:127.0.0.1:443=ns:10.88.0.7:9443` (the apiserver reaches a webhook pod). NETNS_PATH is e.g.
/proc/<pid>/ns/net. A socket belongs to the namespace it was created in, so each one is created after
a setns() into its side; the process is single-threaded, and always returns to its own namespace.
Prints "ready" once listening; exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator

CLONE_NEWNET = 0x40000000
CHUNK = 256 * 1024
Address = tuple[str, int]


class Namespaces:
    def __init__(self, netns_path: str) -> None:
        self.fds = {"host": os.open("/proc/self/ns/net", os.O_RDONLY), "ns": os.open(netns_path, os.O_RDONLY)}
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _setns(self, side: str) -> None:
        if self._libc.setns(self.fds[side], CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({side}): {os.strerror(err)}")

    @contextlib.contextmanager
    def inside(self, side: str) -> Iterator[None]:
        self._setns(side)
        try:
            yield
        finally:
            self._setns("host")

    def socket_for(self, side: str, address: Address) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with self.inside(side):
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    def listener(self, side: str, address: Address) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with self.inside(side):
            return socket.create_server(address, family=family, backlog=128)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def handler(spaces: Namespaces, side: str, target: Address
            ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = spaces.socket_for(side, target)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, target), 10)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError):
            sock.close()
            writer.close()
            return
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
    return handle


def parse_side(text: str) -> tuple[str, Address]:
    side, rest = text.split(":", 1)
    host, port = rest.rsplit(":", 1)
    if side not in ("ns", "host"):
        raise SystemExit(f"forward.py: side must be ns or host, got {side!r}")
    return side, (host.strip("[]"), int(port))


async def main(netns_path: str, specs: list[str]) -> None:
    spaces = Namespaces(netns_path)
    servers = []
    for spec in specs:
        left, right = spec.split("=")
        listen_side, listen = parse_side(left)
        connect_side, target = parse_side(right)
        sock = spaces.listener(listen_side, listen)
        servers.append(await asyncio.start_server(handler(spaces, connect_side, target), sock=sock))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
