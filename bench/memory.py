"""Memory: the service's RSS over a 100k-step run, and the client's RSS with the service down.

Service: one ``linnaeus-metrics serve`` subprocess on 127.0.0.1 (tmp data dir, wandb and
console off, default bounded history of 10,000 points per key). One rank logs
``--steps`` steps, each a batch of 8 samples over 2 tasks plus the learning rate of 2
param groups (LR every step), schedule STEP_INTERVAL 10, WANDB_INTERVAL 50, LR_INTERVAL 1.
At each checkpoint the client flushes (so the service has applied everything) and the
service's VmRSS is read from /proc/<pid>/status. Target: RSS at 100k within +-10 % of 10k.

Client: a spawned process points a client at a closed port on 127.0.0.1 (the service is
down) and logs 50,000 such batches with ``max_queue_items=1000``; its own VmRSS is read
along the way. Its growth must level off once the queue is full, and ``stats()`` must
count the drops. A second row with ``max_queue_items=50,000`` shows the growth that the
queue bound prevents.

Run: ``.venv/bin/python bench/memory.py [--steps 100000]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx

TASKS2 = {"genus": 200, "species": 2_000}
BATCH = 8
POOL = 64
CHECKPOINTS = (10_000, 25_000, 50_000, 75_000, 100_000)
CLIENT_BATCHES = 50_000
CLIENT_POINTS = (0, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000)


def small_pool(seed: int) -> list[c.Batch]:
    return c.batch_pool(seed=seed, count=POOL, tasks=TASKS2, size=BATCH, families={})


# ---------------------------------------------------------------- service memory


def service_memory(steps: int, tmp: Path, budget: c.Budget, env: dict[str, str] | None = None) -> dict[str, Any]:
    from client import MetricsClient

    points = [p for p in CHECKPOINTS if p < steps] + [steps]
    pool = small_pool(5)
    config = c.metrics_config(step_interval=10, wandb_interval=50, lr_interval=1)
    out: dict[str, Any] = {"rows": [], "stopped_early": None}
    with c.ServiceProcess(tmp / "service-data", env) as service:
        mc = MetricsClient(service.url, "memory", rank=0, world_size=1, tasks=dict(TASKS2), total_steps=steps,
                           config=config, max_queue_items=1_000_000)
        try:
            out["rss_start_kib"] = service.rss_kib()
            started, step = time.monotonic(), 0
            for point in points:
                while step < point:
                    step += 1
                    b = pool[step % POOL]
                    mc.log_batch(step, epoch=0, loss=b.loss, task_losses=b.task_losses,
                                 targets=b.targets, topk=b.topk)
                    mc.log_lr(step, {"backbone": 1e-4 / (1 + step * 1e-4), "heads": 1e-3})
                    if step % 5_000 == 0 and budget.left() < 30:
                        out["stopped_early"] = step
                        break
                flushed = mc.flush(timeout_s=max(30.0, min(240.0, budget.left())))
                time.sleep(0.3)  # let the service go idle (no request in flight) before reading
                rss = service.rss_kib()  # before the (small) history read below allocates anything
                info = httpx.get(f"{service.url}/v1/runs/memory/history", params={"keys": "train/loss"},
                                 timeout=30).json()
                points_kept = len(info["series"].get("train/loss", {}).get("steps", []))
                out["rows"].append({"step": step, "rss_kib": rss, "flushed": flushed,
                                    "elapsed_s": time.monotonic() - started, "train_loss_points": points_kept})
                print(f"[{budget.spent():6.1f} s] service memory at step {step}", file=sys.stderr, flush=True)
                if out["stopped_early"]:
                    break
            out["stats"] = mc.stats()
        finally:
            mc.close(timeout_s=10)
    return out


# ---------------------------------------------------------------- client memory


def client_child(port: int, max_queue_items: int, batches: int, result: Any) -> None:
    """Log ``batches`` batches to a closed port; report own RSS along the way and the stats."""
    import logging
    import os

    logging.disable(logging.WARNING)  # the client logs the outage once; keep the table clean
    from client import MetricsClient

    pool = small_pool(9)
    mc = MetricsClient(f"http://{c.LOOPBACK}:{port}", "memory-client", rank=0, world_size=1, tasks=dict(TASKS2),
                       total_steps=batches, max_queue_items=max_queue_items, retry_initial_s=0.5,
                       request_timeout_s=2.0)
    rss = {0: c.rss_kib(os.getpid())}
    started = time.monotonic()
    for step in range(1, batches + 1):
        b = pool[step % POOL]
        mc.log_batch(step, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets, topk=b.topk)
        if step in CLIENT_POINTS:
            rss[step] = c.rss_kib(os.getpid())
    elapsed = time.monotonic() - started
    stats = mc.stats()
    mc.close(timeout_s=0.5)
    result.put({"rss": rss, "stats": stats, "elapsed_s": elapsed})


def client_memory(max_queue_items: int, batches: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    port = c.free_port()  # nothing listens there: the service is down
    proc = ctx.Process(target=client_child, args=(port, max_queue_items, batches, result))
    proc.start()
    try:
        return dict(result.get(timeout=240))
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


# ---------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--history-max-points", type=int, default=1_000,
                        help="the service's history bound; 1,000 points are reached at step 10,000 (STEP_INTERVAL "
                             "10), so 10k -> 100k shows memory once history is bounded; 0: the service default")
    args = parser.parse_args()
    if args.history_max_points > 0:
        os.environ["LINNAEUS_METRICS_HISTORY_MAX_POINTS"] = str(args.history_max_points)
    c.exit_on_sigterm()
    budget = c.Budget(args.budget_s)
    clients = {q: client_memory(q, CLIENT_BATCHES) for q in (1_000, 50_000)}
    print(f"[{budget.spent():6.1f} s] client memory done", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        service = service_memory(args.steps, Path(tmp), budget)
    report(service, clients)
    return 0


def report(service: dict[str, Any], clients: dict[int, dict[str, Any]]) -> None:
    c.print_header("memory: service RSS over one long run; client RSS with the service down",
                   [f"service: 1 rank, batches of {BATCH} samples, 2 tasks (200/2,000 classes), LR every step; "
                    "STEP_INTERVAL 10, WANDB_INTERVAL 50, LR_INTERVAL 1; history_max_points="
                    + os.environ.get("LINNAEUS_METRICS_HISTORY_MAX_POINTS", "10,000 (default)"),
                    "RSS read from /proc/<pid>/status VmRSS after flush() (service idle)"])
    rows = service["rows"]
    base = next((r for r in rows if r["step"] >= 10_000), rows[0] if rows else None)
    table = [[f"{r['step']:,}", f"{r['rss_kib'] / 1024:.1f}",
              c.ratio(r["rss_kib"], base["rss_kib"]) if base else "n/a", r["train_loss_points"],
              f"{r['elapsed_s']:.1f}", r["flushed"]] for r in rows]
    print(f"service RSS at start (no run): {service.get('rss_start_kib', 0) / 1024:.1f} MiB")
    print(c.table(["step", "service RSS MiB", "vs 10k", "train/loss points", "elapsed s", "flushed"], table))
    stats = service.get("stats", {})
    print(f"client stats: queued={stats.get('queued')} delivered={stats.get('delivered')} "
          f"dropped={sum(stats.get('dropped', {}).values())}")
    if service.get("stopped_early"):
        print(f"  NOTE: stopped early at step {service['stopped_early']:,} (time budget)")
    print("\nclient RSS, service down (closed port on 127.0.0.1), 50,000 batches logged:")
    crow = []
    for queue_items, res in clients.items():
        rss = res["rss"]
        steps = sorted(int(k) for k in rss)
        cells = [f"{rss[s] / 1024:.1f}" for s in steps]
        dropped = res["stats"]["dropped"]
        crow.append([f"max_queue_items={queue_items:,}", *cells,
                     f"{(rss[steps[-1]] - rss[steps[0]]) / 1024:+.1f}", res["stats"]["pending"],
                     dropped.get("queue_full", 0), f"{res['elapsed_s']:.1f}"])
    heads = [f"RSS MiB @{int(s):,}" for s in sorted(int(k) for k in next(iter(clients.values()))["rss"])]
    print(c.table(["client", *heads, "growth MiB", "pending", "dropped queue_full", "log s"], crow))
    print("\ntargets:")
    last = rows[-1] if rows else None
    if base and last and last["step"] >= 100_000:
        r = last["rss_kib"] / base["rss_kib"]
        print(f"  service RSS 100k vs 10k within +-10 %: {r:.3f}x ({(r - 1) * 100:+.1f} %) -> "
              f"{c.verdict(abs(r - 1) <= 0.10)}")
    else:
        print("  service RSS 100k vs 10k: n/a (run did not reach 100k steps)")
    bounded = clients.get(1_000)
    if bounded:
        rss = {int(k): v for k, v in bounded["rss"].items()}
        late = (rss[50_000] - rss[5_000]) / 1024
        drops = bounded["stats"]["dropped"].get("queue_full", 0)
        expected = CLIENT_BATCHES - bounded["stats"]["pending"]
        print(f"  client RSS bounded (growth 5k -> 50k batches <= 5 MiB with max_queue_items=1,000): "
              f"{late:+.1f} MiB -> {c.verdict(late <= 5.0)}")
        print(f"  client drops counted (queued - pending = {expected:,}): dropped queue_full={drops:,} -> "
              f"{c.verdict(drops == expected and drops > 0)}")


if __name__ == "__main__":
    sys.exit(main())
