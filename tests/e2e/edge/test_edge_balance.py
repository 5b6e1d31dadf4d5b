"""Several tunnels for one name: both get traffic; one dies and everything moves to the other at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import ports, status, tls_request

pytestmark = pytest.mark.e2e


async def test_two_sidecars_share_then_fail_over(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back_a, _, dev_a, dev_b = await parts.two_replicas(relay)
    p = ports(relay)
    answers = [await tls_request(p["tls"], "app.test", back_a.ca, b"x") for _ in range(10)]
    # idle replicas alternate (exactly 5/5 unless a closing stream still counts for a moment)
    assert set(answers) == {b"A:x", b"B:x"} and 3 <= answers.count(b"A:x") <= 7, answers

    # a long-lived client on A, then A vanishes without a goodbye
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", p["tls"], ssl=back_a.ca.client_context(), server_hostname="app.test")
    writer.write(b"hold")
    first = await asyncio.wait_for(reader.read(100), 5)
    victim, survivor = (dev_a, dev_b) if first == b"A:hold" else (dev_b, dev_a)
    await victim.kill()
    # The edge notices the dead peer (heartbeat timeout 3 s) or the TCP reset, whichever first;
    # then the client on it is closed, not left hanging.
    started = time.monotonic()
    with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(100), 6)
        if data == b"":
            raise ConnectionResetError("closed")
    assert time.monotonic() - started < 5
    writer.close()
    st = await status(relay)
    assert st["names"] == {"app.test": 1} and len(st["tunnels"]) == 1
    want = b"A:y" if survivor is dev_a else b"B:y"
    answers = await asyncio.gather(
        *(tls_request(p["tls"], "app.test", back_a.ca, b"y") for _ in range(10))
    )
    assert answers == [want] * 10


async def test_fewest_streams_wins(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back_a, _, _, _ = await parts.two_replicas(relay)
    held = []
    try:
        p = ports(relay)
        # Three long-lived clients: they spread A, B, then one more on either.
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", p["tls"], ssl=back_a.ca.client_context(),
                                                 server_hostname="app.test")
            w.write(b"h")
            held.append((await asyncio.wait_for(r.read(10), 5), w))
        busy = [x for x, _ in held]
        heavy = b"A:h" if busy.count(b"A:h") == 2 else b"B:h"
        light = b"B:x" if heavy == b"A:h" else b"A:x"
        # The replica with fewer open streams gets every new short client while the imbalance lasts.
        assert await tls_request(p["tls"], "app.test", back_a.ca, b"x") == light
    finally:
        for _, w in held:
            w.close()
