"""`mproxy demo`: an edge relay, a sidecar and sample backends on loopback, with live traffic.

    mproxy demo                  # fixed ports 18443 (https), 18080 (http), 18022 (tcp); Ctrl-C to stop
    mproxy demo --duration 10    # run 10 s of traffic, print the summary, exit 0 if all of it worked
    mproxy demo --free-ports     # let the kernel pick free ports
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run an edge, a sidecar and sample backends on loopback, with live traffic",
        description="Run the whole data path on 127.0.0.1: an edge relay, a sidecar dialling it, an HTTPS "
                    "site (with a generated CA), an HTTP site and a TCP echo, plus sample traffic.",
    )
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--free-ports", action="store_true", help="pick free ports instead of the fixed ones")
    ports.add_argument("--base-port", type=int, default=None, metavar="N",
                       help="move every port: https N+443, http N+80, tcp N+22, tunnel N+444, "
                            "metrics N+1090/N+1091 (default N=18000)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=0.25, metavar="SECONDS",
                        help="pause between rounds of sample traffic (default 0.25)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (certs, configs) on exit")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from mproxy.demo.runner import DemoOptions, DemoPorts, run_demo

    if args.duration is not None and args.duration <= 0:
        print("mproxy demo: --duration must be positive", file=sys.stderr)
        return 2
    if args.base_port is not None and not 1024 <= args.base_port <= 64000:
        print("mproxy demo: --base-port must be 1024-64000", file=sys.stderr)
        return 2
    if args.free_ports:
        ports = DemoPorts.free()
    elif args.base_port is not None:
        ports = DemoPorts.from_base(args.base_port)
    else:
        ports = DemoPorts()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = DemoOptions(ports=ports, duration=args.duration, interval=args.interval, keep_dir=args.keep)
    from mproxy.tunnel.loop import run as run_loop  # uvloop when installed
    return run_loop(run_demo(options))
