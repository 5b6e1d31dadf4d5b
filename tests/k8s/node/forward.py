"""A TCP forwarder from addresses inside another network namespace to ports on this namespace's
127.0.0.1: how the real node's kubelet and pods (in the node's own network namespace) reach the test
apiserver on the host's loopback, with no address but loopback on the host.

    python forward.py NETNS_PATH HOST:PORT=TARGET_PORT [...]

NETNS_PATH is e.g. /proc/<pid>/ns/net. The listening sockets are made inside that namespace (setns),
then the process returns to its own namespace, where it connects to 127.0.0.1:TARGET_PORT for each
accepted client. Exits on SIGTERM; prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
CHUNK = 256 * 1024


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listeners_in(netns_path: str, addresses: list[tuple[str, int]]) -> list[socket.socket]:
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        setns(target)
        try:
            return [socket.create_server(address, backlog=128) for address in addresses]
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def handler(port: int):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
    return handle


def parse(spec: str) -> tuple[tuple[str, int], int]:
    listen, target = spec.split("=")
    host, port = listen.rsplit(":", 1)
    return (host, int(port)), int(target)


async def main(netns_path: str, specs: list[str]) -> None:
    pairs = [parse(spec) for spec in specs]
    socks = listeners_in(netns_path, [address for address, _ in pairs])
    servers = [await asyncio.start_server(handler(target), sock=sock)
               for (_, target), sock in zip(pairs, socks, strict=True)]
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
