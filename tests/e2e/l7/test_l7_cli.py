"""`mproxy sidecar` with an HTTP router whose certificate does not load: exit 2 naming the field."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e


async def test_a_router_certificate_that_does_not_load_is_an_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    cfg = {"edge": {"urls": ["ws://127.0.0.1:9/"]}, "http": {"listen": "127.0.0.1:0"},
           "routes": [{"name": "web", "match": {"services": ["https"]}, "http": "secure"}],
           "httpRouters": [{"name": "secure", "tls": {"certificates": [
               {"certFile": str(tmp_path / "bad.crt"), "keyFile": str(tmp_path / "bad.key")}]}}]}
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", "sidecar", "--config", str(path), "--no-reload",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, (out, err)
    line = err.decode()
    assert line.startswith("mproxy sidecar: invalid config: httpRouters[0].tls.certificates[0]: cannot load "
                           f"{tmp_path / 'bad.crt'} with {tmp_path / 'bad.key'}"), line
    assert "Traceback" not in line
