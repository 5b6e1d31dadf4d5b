"""`mproxy demo`: placeholder until its issue lands; it says so instead of pretending to work."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("demo", help="(not implemented yet)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print("mproxy demo: not implemented yet", file=sys.stderr)
    return 2
