"""What each role pays at start in imports, each checked in a fresh interpreter (sys.modules of this one
holds whatever the other tests imported)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("jwt", "cryptography", "aiohttp", "kopf", "kubernetes", "yaml", "prometheus_client", "dns")


def _loaded_after(code: str) -> set[str]:
    """The top-level packages of HEAVY that `code` leaves in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1])) & set(HEAVY)


def test_the_command_line_parser_imports_no_heavy_package() -> None:
    """`mproxy --help` and `mproxy ROLE --help`: heavy imports belong inside each command's run."""
    assert _loaded_after("import mproxy.cli; mproxy.cli.build_parser()") == set()


def test_the_sidecar_role_never_loads_pyjwt_or_cryptography() -> None:
    code = ("import mproxy.cli.sidecar, mproxy.config.sidecar, mproxy.sidecar.app, mproxy.sidecar.edges, "
            "mproxy.sidecar.tunnel_client, mproxy.tunnel.loop")
    assert _loaded_after(code) & {"jwt", "cryptography", "kopf", "kubernetes"} == set()


# Prints the file of the module whose import statement first loads cryptography.
_SPY = """
import sys, traceback
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "cryptography":
            outside = [f.filename for f in traceback.extract_stack()
                       if "importlib" not in f.filename and not f.filename.startswith("<")]
            print("FIRST-IMPORTER", outside[-1])
            sys.meta_path.remove(self)
sys.meta_path.insert(0, Spy())
"""


def test_the_edge_loads_cryptography_only_through_pyjwt() -> None:
    """PyJWT imports cryptography whenever it is installed (DEVELOPERS.md, Libraries: ~9 MiB and
    ~40-90 ms of an edge's start, accepted); nothing else of the edge's start may be what loads it."""
    code = (_SPY + "import mproxy.cli.edge, mproxy.config.edge, mproxy.edge.relay, mproxy.observe.http, "
            "mproxy.tunnel.loop\nimport sys; print('LOADED', 'cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    if "LOADED True" not in out:  # pragma: no cover - a PyJWT upgrade fixed it
        pytest.fail("the edge no longer loads cryptography at start (PyJWT imports it lazily now?): drop the "
                    "note in DEVELOPERS.md (Libraries) and this check, and move mproxy.ca.server_context "
                    "(ssl only) out of mproxy.ca, so that an edge with tunnel TLS does not load it either")
    [importer] = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("FIRST-IMPORTER")]
    assert "/jwt/" in importer, f"cryptography is first imported by {importer}, not by PyJWT"
