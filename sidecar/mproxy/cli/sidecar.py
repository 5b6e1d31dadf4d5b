"""`mproxy sidecar --config FILE`: terminate M-PROXY tunnels and route client streams to Services."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar",
        help="dial the edge relay and route tunnelled client streams to cluster Services",
        description="Dial the edge relay over WebSocket, accept M-PROXY client streams and route each one "
        "to a backend Service. SIGTERM drains (see docs/sidecar.md).",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the sidecar YAML config file")
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    parser.add_argument("--no-reload", action="store_true", help="do not watch the config file for changes")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from mproxy.config.errors import ConfigError
    from mproxy.config.loader import load_file
    from mproxy.config.sidecar import load_sidecar_config
    from mproxy.observe.logs import setup_logging
    from mproxy.sidecar.app import Sidecar

    try:
        cfg = load_file(args.config, load_sidecar_config)
    except ConfigError as exc:
        print(f"mproxy sidecar: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(cfg.routes)} routes, {len(cfg.edge.urls)} edge URLs)")
        return 0
    setup_logging(cfg.logging.format, cfg.logging.level)
    from mproxy.rlimit import raise_nofile

    raise_nofile()  # each stream holds a backend socket

    async def main() -> int:
        try:
            sidecar = Sidecar(cfg, config_path=None if args.no_reload else args.config)
        except ConfigError as exc:  # a file the config names (an HTTP router's certificate) does not load
            print(f"mproxy sidecar: invalid config: {exc}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(sidecar.shutdown()))
        try:
            await sidecar.start()
        except OSError as exc:
            logging.getLogger("mproxy.sidecar").error("cannot start: %s (is http.listen free?)", exc)
            return 1
        await sidecar.wait_stopped()
        return 0

    from mproxy.tunnel.loop import run as run_loop  # uvloop when installed
    return run_loop(main())
