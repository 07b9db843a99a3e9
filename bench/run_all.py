"""Run every benchmark, one after the other, and write their tables to bench/results/latest.txt.

Each script runs as its own process (its own session, so a script that overruns its hard
timeout is stopped together with the servers it started). Progress goes to stderr; the
tables go to stdout and to the results file.

Run: ``.venv/bin/python bench/run_all.py``
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.txt"
# (script, extra args, hard timeout s); the scripts' own budgets keep them well inside
SCRIPTS = [
    ("client_cost.py", ["--budget-s", "260"], 420),
    ("client_ratio.py", ["--budget-s", "200"], 660),
    ("client_cold.py", [], 300),
    ("client_instructions.py", [], 900),
    ("client_stats.py", [], 300),
    ("ingest.py", ["--budget-s", "300"], 420),
    ("requests.py", [], 180),
    ("ranks1024.py", [], 400),
    ("checkpoint_wait.py", [], 300),
    ("memory.py", ["--budget-s", "200"], 300),
    ("freshness.py", ["--budget-s", "90"], 180),
    ("recovery.py", [], 420),
]


def run(script: str, args: list[str], timeout_s: float) -> tuple[str, float, str]:
    """Run one script; returns (stdout, seconds, status)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=HERE.parent)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this script's process leads (its servers too)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        status = f"stopped after the hard timeout of {timeout_s:.0f} s"
    return out, time.monotonic() - started, status


def revision() -> str:
    """The commit measured, and whether client/ or service/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=HERE.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "client", "service"], capture_output=True,
                               text=True, timeout=10, cwd=HERE.parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (client/ or service/ modified)' if dirty else ''}" if head else "unknown"


def main() -> int:
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"linnaeus-metrics benchmarks, {stamp}, commit {revision()}\n"
             "command: .venv/bin/python bench/run_all.py\n"]
    failed = []
    for script, args, timeout_s in SCRIPTS:
        print(f"--- {script} ...", file=sys.stderr, flush=True)
        out, seconds, status = run(script, args, timeout_s)
        print(out, flush=True)
        parts.append(f"{out.rstrip()}\n[{script}: {status}, {seconds:.0f} s]\n")
        if status != "ok":
            failed.append(script)
        print(f"--- {script}: {status}, {seconds:.0f} s", file=sys.stderr, flush=True)
    total = time.monotonic() - started
    parts.append(f"total: {total:.0f} s" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(parts) + "\n")
    print(f"total {total:.0f} s; written to {RESULTS.relative_to(HERE.parent)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
