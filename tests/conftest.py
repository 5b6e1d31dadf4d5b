"""Fixtures shared by every test layer.

`need()` is the one way a test says it needs an outside tool. Locally a missing tool skips the test
with a loud reason; in CI (MPROXY_REQUIRE_ALL=1, set by scripts/test when CI=true) it fails, so no
skipped check is ever counted as a pass.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from pathlib import Path

import pytest
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = REPO_ROOT / "tests" / "interop" / "node"


def need(condition: object, reason: str) -> None:
    """Skip (locally) or fail (CI) when `condition` is falsy."""
    if condition:
        return
    if os.environ.get("MPROXY_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"UNAVAILABLE: {reason} (run scripts/test to install it)")


async def serve_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """`app` on a free loopback port: the runner (clean it up) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


LOOPS = ("asyncio", "uvloop")  # the event loops the roles run on (mproxy.tunnel.loop)


def loop_policy(name: str) -> asyncio.AbstractEventLoopPolicy:
    """The policy of one of LOOPS, for an `event_loop_policy` fixture parametrized over them."""
    if name == "asyncio":
        return asyncio.DefaultEventLoopPolicy()
    try:
        import uvloop
    except ImportError:
        need(False, "uvloop (a dependency on Linux: pip install -e .)")
        raise
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def node_bin() -> str:
    """Path to node, with the reference npm packages installed beside the interop harness."""
    node = shutil.which("node")
    need(node, "node is not on PATH")
    need((NODE_DIR / "node_modules" / "proxy-packer").is_dir(), "npm proxy-packer is not installed")
    assert node is not None
    return node
