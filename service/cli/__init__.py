"""``linnaeus-metrics``: serve, validate-config, and queries for people (runs, show, snapshot)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import config, query, serve
from service.cli.errors import CliError


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every command)."""
    parser = argparse.ArgumentParser(prog="linnaeus-metrics", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (serve, config, query):
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"linnaeus-metrics: error: {exc}", file=sys.stderr)
        return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("linnaeus-metrics")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
