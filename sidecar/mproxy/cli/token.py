"""`mproxy token`: mint a tunnel token (JWT HS256, telebit claims `domains` and `ports`; `listenerGroups`
with --listener-group).

    mproxy token --secret-file /etc/mproxy/secret --domain example.com --port 5050 --ttl 30d

The token is printed on stdout only, so it can be captured into a Kubernetes Secret.

    mproxy token --secret-file /etc/mproxy/secret --verify TOKEN    # or --verify - to read stdin

checks a token as the edge would and prints its grant (exit 0) or why the edge refuses it (exit 1).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 3600, 90m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="mint a tunnel token for the edge (JWT HS256)",
        description="Mint a tunnel token. Each --domain also covers every name under it.",
    )
    parser.add_argument("--secret-file", required=True, help="file holding the edge's shared secret")
    parser.add_argument("--domain", action="append", default=[], help="a name to grant (repeatable)")
    parser.add_argument(
        "--port", action="append", type=int, default=[], help="a TCP and UDP port to grant (repeatable)"
    )
    parser.add_argument("--listener-group", action="append", default=None, dest="listener_groups",
                        metavar="GROUP", help="limit the tunnel to the edge listeners of this group, and "
                        "grant it every name and port on them that no other tunnel is granted specifically "
                        "(repeatable; default: any listener, no group-wide grant)")
    parser.add_argument("--ttl", type=parse_duration, default=None,
                        help="lifetime, e.g. 3600, 90m, 12h, 30d (default: no expiry)")
    parser.add_argument("--subject", default=None, help="optional 'sub' claim naming the holder")
    parser.add_argument("--verify", metavar="TOKEN", default=None,
                        help="check TOKEN (or '-' for stdin) as the edge would, instead of minting one")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from mproxy.edge.auth import mint, read_secret
    from mproxy.edge.jwt import TokenError

    if args.verify is not None:
        return _verify(args)
    if not args.domain and not args.port and not args.listener_groups:
        print("mproxy token: grant at least one --domain, --port or --listener-group", file=sys.stderr)
        return 2
    try:
        secret = read_secret(args.secret_file)
        token = mint(secret, domains=args.domain, ports=args.port, ttl=args.ttl, subject=args.subject,
                     listener_groups=args.listener_groups)
    except (ValueError, TokenError) as exc:
        print(f"mproxy token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    from mproxy.edge.auth import Grant, read_secret
    from mproxy.edge.jwt import TokenError, decode

    token = sys.stdin.read().strip() if args.verify == "-" else args.verify.strip()
    try:
        secret = read_secret(args.secret_file)
        claims = decode(token, secret)
        grant = Grant.from_claims(claims)
    except ValueError as exc:
        print(f"mproxy token: {exc}", file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"refused ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    out: dict[str, Any] = {"valid": True, "domains": sorted(grant.domains), "ports": sorted(grant.ports)}
    if grant.groups is not None:
        out["listenerGroups"] = sorted(grant.groups)
    out.update({k: claims[k] for k in ("iat", "exp", "sub") if k in claims})
    print(json.dumps(out))
    return 0
