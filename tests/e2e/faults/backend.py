"""A backend process for the fault tests: `python backend.py PORT TAG MODE`.

MODE `echo`: write the one-byte TAG (so a client knows which replica served it), then echo every byte
and the half-close. MODE `sink`: accept and never read. SIGTERM: stop accepting, let open connections
finish (up to 5 s), exit 0; SIGKILL is the crash. Prints `ready` once listening. Stdlib only: it is
started as a plain script, and must not depend on mproxy.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def main(port: int, tag: bytes, mode: str) -> int:
    open_conns: set[asyncio.Task[None]] = set()
    held: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(tag)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "sink":
            held.append(writer)  # accept, never read: the client's bytes pile up in the kernel
            return
        task = asyncio.current_task()
        assert task is not None
        open_conns.add(task)
        try:
            await echo(reader, writer)
        finally:
            open_conns.discard(task)

    server = await asyncio.start_server(on_conn, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()  # no new connections; the open ones finish
    if open_conns:
        await asyncio.wait(set(open_conns), timeout=5)
    for writer in held:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3])))
