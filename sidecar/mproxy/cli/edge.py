"""`mproxy edge --config FILE`: run the edge relay that sidecars dial (see docs/edge.md).

SIGTERM or SIGINT drains: listeners stop accepting, /readyz turns 503, open client streams get up to
`drainSeconds` to finish, then tunnels are closed with 1001 (going away) and the process exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typed, so a rename in the relay fails mypy here; imported lazily at run time
    from mproxy.config.edge import EdgeConfig
    from mproxy.edge.endpointslices import SliceCounter
    from mproxy.edge.relay import EdgeRelay


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "edge", help="run the edge relay (public listeners + tunnel endpoint)",
        description="Run the M-PROXY edge relay: public TLS/HTTP/TCP listeners and the WebSocket endpoint "
                    "that sidecars dial.",
    )
    parser.add_argument("--config", required=True, help="edge config file (YAML, see docs/edge.md)")
    parser.add_argument("--check", action="store_true", help="validate the config and the secret, then exit")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:

    from mproxy.config.edge import load_edge_config
    from mproxy.config.errors import ConfigError
    from mproxy.config.loader import load_file
    from mproxy.edge.auth import read_secret
    from mproxy.observe.logs import setup_logging

    try:
        config = load_file(args.config, load_edge_config)
        secret = read_secret(config.secret_file)
    except (ConfigError, ValueError) as exc:
        print(f"mproxy edge: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"mproxy edge: {args.config} is valid ({len(config.listeners)} listeners)")
        return 0
    setup_logging(config.logging.format, config.logging.level)
    _raise_nofile(config.limits.pre_routing_connections)
    try:
        from mproxy.tunnel.loop import run as run_loop  # uvloop when installed
        return run_loop(serve(config, secret))
    except OSError as exc:
        print(f"mproxy edge: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _raise_nofile(pre_routing: int) -> None:
    import logging

    from mproxy.rlimit import raise_nofile

    nofile = raise_nofile()
    if nofile is not None and pre_routing + 256 > nofile:
        logging.getLogger("mproxy.edge").warning(
            "the open-file limit (%d) is below limits.preRoutingConnections (%d) + 256: raise the hard "
            "limit (ulimit -Hn, the container's nofile) or lower limits.preRoutingConnections", nofile,
            pre_routing)


async def serve(config: Any, secret: bytes) -> int:
    import asyncio
    import logging
    import signal

    from mproxy.edge.relay import EdgeRelay

    relay = EdgeRelay(config, secret)
    await relay.start()
    counter = _count_replicas(config, relay)
    ports = ", ".join(f"{item.config.kind}={item.port}" for item in relay.listeners)
    # One line on stdout that scripts (and the tests) can wait for.
    print(f"mproxy edge ready: tunnel={relay.tunnel_port} http={relay.http_port} {ports}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("mproxy.edge").info("draining for up to %g s", config.drain_seconds)
    if counter is not None:
        await counter.close()
    await relay.drain()
    return 0


def _count_replicas(config: EdgeConfig, relay: EdgeRelay) -> SliceCounter | None:
    """The announced count: static, or from EndpointSlices (replicasFrom), written into the headers every
    tunnel upgrade answers with."""
    import os

    from mproxy.edge.endpointslices import SliceCounter
    from mproxy.metrics.replicas import ReplicaMetrics
    from mproxy.tunnel.identity import LIVE_HEADER, REPLICAS_HEADER

    metrics = ReplicaMetrics(relay.metrics.registry, live=config.replicas_from is not None)
    metrics.announced.set(config.replicas)
    if config.replicas_from is None:
        return None

    def announce(count: int) -> None:
        relay.tunnels.identity[REPLICAS_HEADER] = str(count)

    # sidecars behind a balancer probe for changes (edge.probeSeconds)
    relay.tunnels.identity[LIVE_HEADER] = "true"

    self_name = os.environ.get("POD_NAME") or relay.edge_id  # its endpoint's targetRef in the slices
    counter = SliceCounter(config.replicas_from, self_name, announce, metrics, config.replicas)
    counter.start()
    return counter
