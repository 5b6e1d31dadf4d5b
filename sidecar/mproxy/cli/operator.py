"""`mproxy operator`: placeholder until its issue lands; it says so instead of pretending to work."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("operator", help="(not implemented yet)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print("mproxy operator: not implemented yet", file=sys.stderr)
    return 2
