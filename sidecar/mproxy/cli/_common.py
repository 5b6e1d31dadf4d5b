"""Scaffolding the file-in, file-out subcommands (pack, unpack) share."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any


def add_documented(subparsers: Any, name: str, help_text: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its module docstring as written (examples and all)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


@contextlib.contextmanager
def binary_file(path: str, mode: str) -> Iterator[IO[bytes]]:
    """Open `path` in binary `mode` ("rb" or "wb"); '-' is stdin or stdout, flushed and left open."""
    if path != "-":
        with open(path, mode) as file:
            yield file
        return
    stream = sys.stdin.buffer if "r" in mode else sys.stdout.buffer
    yield stream
    stream.flush()
