"""24 MiB each way, sha256-checked and time-bounded, over ws and wss, between every pair of peers (see
conftest). Over wss a bulk transfer toward a peer that sends nothing back used to stall (issue 11)."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import BACKEND_LOG, BLOB_SHA, PAIRS, SIZE, TRANSPORTS, download, upload

pytestmark = [pytest.mark.e2e, pytest.mark.interop]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("pair", PAIRS)
async def test_24_mib_each_way(system, pair: str, transport: str) -> None:  # type: ignore[no-untyped-def]
    async with system(pair, transport) as sys_:
        digest, up_s = await upload(sys_.port)
        assert digest == BLOB_SHA, (f"{pair} over {transport}: upload corrupted ({up_s:.2f} s); device.js: "
                                    f"{sys_.odd_events()}; backend: {BACKEND_LOG[-3:]}")
        digest, n, down_s = await download(sys_.port)
        assert (n, digest) == (SIZE, BLOB_SHA), f"{pair} over {transport}: download corrupted"
        print(f"{pair} {transport}: 24 MiB up {up_s:.2f} s, down {down_s:.2f} s")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("pair", PAIRS)
async def test_24_mib_to_a_client_that_stops_reading_first(system, pair: str, transport: str) -> None:  # type: ignore[no-untyped-def]
    """The client reads nothing until a pause crossed the tunnel (mproxy's edge pauses its peer; relay.js
    pauses the sidecar), then everything: pause and resume over ws and wss, in order and intact."""
    async with system(pair, transport) as sys_:
        async def until_paused() -> None:
            sent, received = 0, 0
            while not (sent if sys_.edge is not None else received):
                await asyncio.sleep(0.02)
                sent, received = sys_.pauses()

        digest, n, down_s = await download(sys_.port, stall=until_paused)
        assert (n, digest) == (SIZE, BLOB_SHA), f"{pair} over {transport}: corrupted after a pause"
        print(f"{pair} {transport}: paused, then 24 MiB down in {down_s:.2f} s")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("pair", PAIRS)
async def test_24_mib_to_a_backend_that_stops_reading_first(system, pair: str, transport: str) -> None:  # type: ignore[no-untyped-def]
    """The backend reads nothing past the length until a pause crossed the tunnel toward the client's
    side (the sidecar or device.js pauses the edge; the sidecar pauses relay.js), then everything, and
    answers after the peer's resume. Without the stall that pause came only when the machine was loaded:
    device.js then sent every later data frame as a `resume` (proxy-packer's packHeader kept the service
    in the client's address), the edge dropped the 64-byte answer, and the upload failed now and then."""
    async with system(pair, transport) as sys_:
        async def until_paused() -> None:
            sent, received = 0, 0
            while not (received if sys_.edge is not None else sent):
                await asyncio.sleep(0.02)
                sent, received = sys_.pauses()

        sys_.upload_stall = until_paused
        digest, up_s = await upload(sys_.port)
        assert digest == BLOB_SHA, (f"{pair} over {transport}: upload corrupted after a pause "
                                    f"({up_s:.2f} s); device.js: {sys_.odd_events()}; "
                                    f"backend: {BACKEND_LOG[-3:]}")
        print(f"{pair} {transport}: backend paused, then 24 MiB up in {up_s:.2f} s")
