"""``log_batch`` and ``wandb.log`` as a training loop calls them: each call after a training step's memory traffic.

bench/client_ratio.py times calls back to back, so the interpreter, numpy and the client
stay in the CPU caches from one call to the next. A training loop calls ``log_batch`` once a
step, after the forward and backward passes have streamed far more memory than the caches
hold. Here every timed call (service up, label lists or numpy str arrays; service down with
the queue full at the default 10,000 records, so that every call drops the oldest; wandb
offline ``run.log`` of 30 scalars) follows a pass over ``--pollute-mib`` MiB of memory
(default 32, a multiply in place), untimed, so each call starts cold. Contenders alternate in
blocks of ``--block`` calls in each of ``--runs`` fresh processes (default 3), after an
untimed round; the sender is flushed (untimed) after each block with the service up. Issue
17's service-down target (p99 <= 4x the median with the service up) is given for these cold
calls too: they are what a training loop makes, while bench/client_ratio.py's hot loop also
times each block's first call after another client's block (its caches evicted by a second
client, which a training process does not have).

Run: ``.venv/bin/python bench/client_cold.py [--runs 3] [--rounds 8] [--block 150] [--pollute-mib 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import client_ratio as ratio
import numpy as np

CONTENDERS = (ratio.UP_LISTS, ratio.UP_NP, ratio.DOWN_LISTS, ratio.DOWN_NP, ratio.WANDB)


def child(rounds: int, calls: int, pollute_mib: int) -> dict[str, Any]:
    pool = c.batch_pool(seed=11, count=ratio.POOL, tasks=c.TASKS4, size=256)
    memory = np.ones(pollute_mib * 2**20 // 8)
    with tempfile.TemporaryDirectory(prefix="bench-client-cold-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update(c.wandb_env(tmp / "wandb"))
        with c.ServiceProcess(tmp / "service-data") as service:
            who = ratio.Contenders(service.url, f"http://{c.LOOPBACK}:{c.free_port()}", pool)
            try:
                who.fill_down_queue()
                down_growth = 0  # RSS growth over the blocks with the queue full (the rest of the process moves apart)
                times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
                for r in range(rounds + 1):  # round 0: untimed
                    order = c.balanced_order(CONTENDERS, r)
                    for name in order:
                        fn = who.call(name)
                        rss = c.rss_kib(os.getpid())
                        for i in range(calls):
                            memory *= 1.0000001  # the step's memory traffic, untimed
                            t0 = time.perf_counter_ns()
                            fn(r * calls + i)
                            t1 = time.perf_counter_ns()
                            if r:
                                times[name].append(t1 - t0)
                        if name in ratio.DOWN:
                            down_growth += c.rss_kib(os.getpid()) - rss
                        who.after_block(name)
            finally:
                who.close()
    out: dict[str, Any] = {name: {"median": float(np.median(ns)), "p99": c.pct(np.array(ns), 99),
                                  "max": float(np.max(ns)), "calls": len(ns)} for name, ns in times.items()}
    out["rss_growth_kib"] = down_growth
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=150)
    parser.add_argument("--pollute-mib", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    c.exit_on_sigterm()
    if args.child:
        print(json.dumps(child(args.rounds, args.block, args.pollute_mib)))
        return 0
    results = c.fresh_runs(__file__, ["--rounds", str(args.rounds), "--block", str(args.block),
                                      "--pollute-mib", str(args.pollute_mib)], args.runs, 600)
    c.print_header("client_cold: log_batch next to wandb.log, each call after a pass over "
                   f"{args.pollute_mib} MiB (a training step's memory traffic)",
                   [f"{args.runs} fresh processes; {args.rounds} rounds of alternating blocks of {args.block} calls, "
                    "after one untimed round; service up; batch as bench/client_ratio.py",
                    "command: .venv/bin/python bench/client_cold.py " + " ".join(sys.argv[1:])])
    rows = []
    for run, res in enumerate(results, 1):
        for name in CONTENDERS:
            fig = res[name]
            rows.append([run, name, fig["calls"], c.us(fig["median"]), c.us(fig["p99"]), c.us(fig["max"]),
                         c.ratio(fig["median"], res[ratio.WANDB]["median"])])
    print(c.table(["run", "contender", "calls", "median us", "p99 us", "max us", "median / wandb"], rows))
    print("\ncold calls (each judged by the least favourable run):")
    for down, up in ((ratio.DOWN_LISTS, ratio.UP_LISTS), (ratio.DOWN_NP, ratio.UP_NP)):
        ratios = [res[down]["p99"] / res[up]["median"] for res in results]
        worst_max = max(res[down]["max"] for res in results)
        print(f"  {down}: p99 <= 4x up median: {', '.join(f'{r:.2f}x' for r in ratios)} -> "
              f"{c.verdict(max(ratios) <= 4)}; max < 20 ms: {worst_max / 1e6:.2f} ms -> {c.verdict(worst_max < 20e6)}")
    growth = max(res["rss_growth_kib"] for res in results) / 1024
    print(f"  memory bounded while full (RSS growth summed over the service-down blocks <= 5 MiB): "
          f"{growth:+.1f} MiB -> {c.verdict(growth <= 5)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
