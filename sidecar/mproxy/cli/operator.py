"""`mproxy operator`: run the Kubernetes operator (Tunnel CRD, sidecar injection).

The operator lives in the control-plane package `mproxy_operator`, which the data plane must never
import statically (import-linter contract). So the options are parsed by the operator itself, and the
module is loaded with importlib only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator (Tunnel CRD, sidecar injection webhook)",
        description="Run the mproxy operator. `mproxy operator --help` lists its options.",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, goes to the operator's own parser
    )
    parser.add_argument("operator_args", nargs=argparse.REMAINDER)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    operator_main = importlib.import_module("mproxy_operator.main")
    status: int = operator_main.main(list(args.operator_args), prog="mproxy operator")
    return status
