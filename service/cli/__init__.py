"""``linnaeus-metrics``: serve, validate-config, and queries for people (runs, show, snapshot)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import config, query, serve
from service.cli.errors import CliError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="linnaeus-metrics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (serve, config, query):
        module.add_commands(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"linnaeus-metrics: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
