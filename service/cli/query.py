"""Queries for people: ``runs``, ``show RUN``, ``snapshot RUN -o FILE``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from service.cli.errors import CliError

DEFAULT_URL = "http://127.0.0.1:8000"


def add_commands(commands: Any) -> None:
    """Register ``runs``, ``show`` and ``snapshot``."""
    runs = commands.add_parser("runs", help="list the service's runs")
    show = commands.add_parser("show", help="latest values of a run as a table")
    show.add_argument("run_id")
    show.add_argument("--keys", help="comma-separated keys or prefixes (e.g. train/,val/loss)")
    snap = commands.add_parser("snapshot", help="save a run's snapshot (JSON)")
    snap.add_argument("run_id")
    snap.add_argument("-o", "--output", required=True, help="file to write ('-' for standard output)")
    for cmd in (runs, show, snap):
        cmd.add_argument("--url", default=os.environ.get("LINNAEUS_METRICS_URL", DEFAULT_URL),
                         help=f"the service's base URL (env LINNAEUS_METRICS_URL; default {DEFAULT_URL})")
        cmd.add_argument("--token", default=os.environ.get("LINNAEUS_METRICS_TOKEN"),
                         help="bearer token when the service requires one (env LINNAEUS_METRICS_TOKEN)")
    runs.set_defaults(func=_runs)
    show.set_defaults(func=_show)
    snap.set_defaults(func=_snapshot)


def _get(args: argparse.Namespace, path: str) -> Any:
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        reply = httpx.get(args.url.rstrip("/") + path, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.url}: {exc}") from exc
    if reply.status_code >= 400:
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text
        raise CliError(f"{reply.status_code}: {detail}")
    return reply.json()


def _runs(args: argparse.Namespace) -> int:
    runs = _get(args, "/v1/runs")["runs"]
    rows: list[tuple[str, ...]] = [("run", "status", "world_size", "watermark")]
    rows += [(r["run_id"], r["status"], str(r.get("world_size", "-")), str(r.get("watermark", "-"))) for r in runs]
    rows += [(r["run_id"], "  reason", r["reason"], "") for r in runs if r["status"] == "quarantined"]
    print(_format(rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    data = _get(args, f"/v1/runs/{args.run_id}/metrics")
    wanted = [k for k in (args.keys or "").split(",") if k]
    rows: list[tuple[str, ...]] = [("key", "value", "step")]
    for key, entry in data["metrics"].items():
        if not wanted or any(key == w or key.startswith(w) for w in wanted):
            rows.append((key, f"{entry['value']:.6g}", str(entry["step"])))
    print(f"run {data['run_id']} at step {data['step']}")
    print(_format(rows))
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    snapshot = _get(args, f"/v1/runs/{args.run_id}/snapshot")
    text = json.dumps(snapshot)
    if args.output == "-":
        sys.stdout.write(text + "\n")
        return 0
    try:
        Path(args.output).write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write the snapshot to {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote snapshot of {args.run_id} (cut at step {snapshot['cut']['watermark']}) to {args.output}")
    return 0


def _format(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
