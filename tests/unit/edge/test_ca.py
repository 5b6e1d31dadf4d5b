"""The small CA: a real TLS handshake verifies a leaf it issued, by DNS name and by IP."""

from __future__ import annotations

import asyncio
import ssl
import stat

import pytest

from mproxy.ca import CertificateAuthority, server_context


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> bytes:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=name
        )
        data = await reader.read()
        writer.close()
        return data
    finally:
        server.close()
        await server.wait_closed()


async def test_issued_leaf_verifies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = CertificateAuthority.create("test CA")
    leaf = ca.issue(["app.example.test", "127.0.0.1"])
    cert_path, key_path = leaf.write(tmp_path, "app")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    ctx = server_context(cert_path, key_path)
    assert await _handshake(ctx, ca.client_context(), "app.example.test") == b"hi"
    assert await _handshake(ctx, ca.client_context(), "127.0.0.1") == b"hi"
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(ctx, ca.client_context(), "other.example.test")
    stranger = CertificateAuthority.create("other CA")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(ctx, stranger.client_context(), "app.example.test")


def test_bad_files_give_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="cannot load TLS certificate"):
        server_context(tmp_path / "nope.crt", tmp_path / "nope.key")
