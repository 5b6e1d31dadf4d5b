"""The `mproxy` command line: one entry point, one module per subcommand.

Each module in COMMANDS defines `register(subparsers)`, which adds its parser and sets `run`, a function
taking the parsed arguments and returning the exit status. Heavy imports belong inside `run`, so that
`mproxy unpack` does not pay for aiohttp or kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from mproxy import __version__

COMMANDS = ("sidecar", "edge", "operator", "demo", "pack", "unpack", "token")

Runner = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mproxy",
        description="Kubernetes ingress through M-PROXY tunnels (edge relay, sidecar, operator).",
    )
    parser.add_argument("--version", action="version", version=f"mproxy {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"mproxy.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mproxy unpack big.bin | head` closes stdout early; that is not an error worth a traceback.
        sys.stderr.close()
        return 141
