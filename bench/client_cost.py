"""Training-thread cost of ``MetricsClient.log_batch`` next to wandb, torchmetrics and MLflow.

One process, one run, side by side: the client is connected to a real service
(``linnaeus-metrics serve`` on 127.0.0.1, its own process) so its sender thread really
encodes and sends while the training thread logs. Each contender is timed per call with
``time.perf_counter_ns`` over ``--calls`` calls after a warm-up:

- ``log_batch`` of a batch of 256 samples, 4 tasks (50/500/2,000/10,000 classes), two
  subset families (rarity: 3 labels, mask: 2), given as top-3 int arrays, as float32
  numpy logits, and as float32 torch CPU logits;
- ``run.log`` of 30 scalars with wandb in offline mode;
- torchmetrics ``MulticlassAccuracy.update`` top-1 and top-3 for the same 4 tasks
  (8 updates per batch, torch CPU logits, ``average="micro"``);
- ``mlflow.log_metrics`` of 30 scalars to a local ``mlflow server`` (SQLite backend)
  started here (n/a when it cannot start).

Run: ``.venv/bin/python bench/client_cost.py [--calls 2000]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import numpy as np

BATCH = 256
TOPK_ROW = "log_batch topk= int64 (labels: lists)"
POOL = 6  # distinct batches cycled through (10k-class logits are 10 MB a batch)
WARMUP = 200
FAST_FORMS = ("topk", "labels-np", "bare")
SCALARS = 30


def time_calls(fn: Callable[[int], Any], calls: int, warmup: int, budget: c.Budget,
               share_s: float) -> np.ndarray:
    """Per-call nanoseconds of ``fn(i)`` over ``calls`` calls after a warm-up (both bounded by time).

    The warm-up is ``warmup`` calls or 2 s, whichever ends first (at least 10 calls).
    """
    warm_until = time.monotonic() + 2.0
    for i in range(warmup):
        fn(i)
        if i >= 10 and time.monotonic() > warm_until:
            break
    out = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    stop_at = time.monotonic() + min(share_s, max(budget.left(), 1.0))
    done = 0
    for i in range(calls):
        start = clock()
        fn(warmup + i)
        out[i] = clock() - start
        done += 1
        if (i & 63) == 0 and time.monotonic() > stop_at:
            break
    return out[:done]


class Linnaeus:
    """One client on a real service; ``step`` grows across forms so no step repeats."""

    def __init__(self, url: str, pool: list[c.Batch]) -> None:
        from client import MetricsClient

        self.pool = pool
        self.step = 0
        self.client = MetricsClient(url, "client-cost", rank=0, world_size=1, tasks=dict(c.TASKS4),
                                    total_steps=10**7, subsets=c.FAMILIES,
                                    config=c.metrics_config(step_interval=10, wandb_interval=50),
                                    max_queue_items=1_000_000)
        self.torch_logits: list[dict[str, Any]] = []
        self.label_arrays = [b.subset_arrays() for b in pool]

    def flush(self) -> None:
        if not self.client.flush(timeout_s=60):
            raise RuntimeError("the client could not deliver its batches")

    def prepare_torch(self) -> None:
        import torch

        self.torch_logits = [{t: torch.from_numpy(a) for t, a in (b.logits or {}).items()} for b in self.pool]

    def call(self, i: int, form: str) -> None:
        b = self.pool[i % len(self.pool)]
        self.step += 1
        if form == "bare":
            self.client.log_batch(self.step, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets,
                                  topk=b.topk)
            return
        if form == "labels-np":
            self.client.log_batch(self.step, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets,
                                  topk=b.topk, subsets=self.label_arrays[i % len(self.pool)])
            return
        if form == "topk":
            preds: dict[str, Any] = {"topk": b.topk}
        elif form == "numpy":
            preds = {"logits": b.logits}
        else:
            preds = {"logits": self.torch_logits[i % len(self.pool)]}
        self.client.log_batch(self.step, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets,
                              subsets=b.subsets, **preds)


class Torchmetrics:
    """Top-1 and top-3 ``MulticlassAccuracy`` per task, updated with torch CPU logits."""

    def __init__(self, pool: list[c.Batch]) -> None:
        import torch
        from torchmetrics.classification import MulticlassAccuracy

        self.metrics = {t: (MulticlassAccuracy(num_classes=n, top_k=1, average="micro"),
                            MulticlassAccuracy(num_classes=n, top_k=3, average="micro"))
                        for t, n in c.TASKS4.items()}
        self.data = [({t: torch.from_numpy(a) for t, a in (b.logits or {}).items()},
                      {t: torch.from_numpy(a) for t, a in b.targets.items()}) for b in pool]

    def call(self, i: int) -> None:
        logits, targets = self.data[i % len(self.data)]
        for task, (top1, top3) in self.metrics.items():
            top1.update(logits[task], targets[task])
            top3.update(logits[task], targets[task])


class Wandb:
    def __init__(self) -> None:
        import wandb

        self.run = wandb.init(project="linnaeus-bench", mode="offline", config={"bench": "client_cost"})
        self.names = [f"train/scalar_{k:02d}" for k in range(SCALARS)]
        self.rng = np.random.default_rng(1)
        self.values = self.rng.random((64, SCALARS)).tolist()

        self.step = 0

    def call(self, i: int) -> None:
        self.step += 1  # wandb drops rows whose step does not grow
        self.run.log(dict(zip(self.names, self.values[i % 64], strict=True)), step=self.step)

    def close(self) -> None:
        self.run.finish()


class Mlflow:
    """A local ``mlflow server`` (SQLite backend) and a run logging 30 scalars per call."""

    def __init__(self, root: Path) -> None:
        self.proc: Any = None
        self.root = root
        self.why_not: str | None = None

    def start(self, deadline_s: float) -> bool:
        import subprocess

        exe = Path(sys.executable).with_name("mlflow")
        if not exe.exists():
            self.why_not = "the mlflow command is not installed in this venv"
            return False
        port = c.free_port()
        self.url = f"http://{c.LOOPBACK}:{port}"
        cmd = [str(exe), "server", "--host", c.LOOPBACK, "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        self.log = self.root / "mlflow-server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                         env={**os.environ, "MLFLOW_TRACKING_URI": ""}, start_new_session=True)
        problem = c.wait_http_ok(f"{self.url}/health", deadline_s, self.proc)
        if problem is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            self.why_not = f"mlflow server {problem}: {' | '.join(tail)}"
            return False
        import mlflow

        mlflow.set_tracking_uri(self.url)
        mlflow.set_experiment("linnaeus-bench")
        self.mlflow = mlflow
        self.run = mlflow.start_run()
        self.names = [f"train/scalar_{k:02d}" for k in range(SCALARS)]
        self.values = np.random.default_rng(2).random((64, SCALARS)).tolist()
        return True

    def call(self, i: int) -> None:
        self.mlflow.log_metrics(dict(zip(self.names, self.values[i % 64], strict=True)), step=i)

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None and hasattr(self, "mlflow"):
                import io

                with contextlib.redirect_stdout(io.StringIO()):  # it prints links to the web UI
                    self.mlflow.end_run()
        finally:
            self._kill()

    def _kill(self) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        # the server forks workers into its own session (started above): stop that group only
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, OSError):
            pass
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def progress(what: str, budget: c.Budget) -> None:
    print(f"[{budget.spent():6.1f} s] {what}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); see README")
    args = parser.parse_args()
    c.exit_on_sigterm()
    budget = c.Budget(args.budget_s)
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench-client-cost-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update(c.wandb_env(tmp / "wandb"))
        return run(tmp, args.calls, budget)


def run(tmp: Path, calls: int, budget: c.Budget) -> int:
    pool = c.batch_pool(seed=11, count=POOL, tasks=c.TASKS4, size=BATCH, with_logits=True)
    results: dict[str, np.ndarray | str] = {}
    service = c.ServiceProcess(tmp / "service-data").start()
    mlflow = Mlflow(tmp / "mlflow")
    (tmp / "mlflow").mkdir()
    wandb_run: Wandb | None = None
    lin: Linnaeus | None = None
    drops: dict[str, Any] = {}
    try:
        lin = Linnaeus(service.url, pool)
        lin.prepare_torch()
        # steady state, as in a long training run: the fast forms each run one untimed round first (the
        # session and connection open; the process's allocator stops returning the queue's memory to the
        # OS between rounds, which it does at first and which costs page faults on every call)
        for form in FAST_FORMS:
            time_calls(functools.partial(lin.call, form=form), calls, WARMUP, budget, budget.seconds / 16)
            lin.flush()
        share = budget.seconds / 8
        for form, label in (("topk", TOPK_ROW), ("labels-np", "log_batch topk=, labels as numpy str"),
                            ("bare", "log_batch topk=, no subsets"),
                            ("numpy", "log_batch logits= numpy f32"),
                            ("torch", "log_batch logits= torch f32")):
            results[label] = time_calls(functools.partial(lin.call, form=form), calls, WARMUP, budget, share)
            progress(f"{label}: {len(results[label])} calls", budget)
            lin.client.flush(timeout_s=min(120.0, max(budget.left(), 10.0)))  # not timed: next form starts clean
            progress(f"{label}: flushed", budget)
        tm = Torchmetrics(pool)
        results["torchmetrics 4x(top1+top3).update"] = time_calls(tm.call, calls, WARMUP, budget, share)
        progress("torchmetrics done", budget)
        wandb_run = Wandb()
        time_calls(wandb_run.call, calls, WARMUP, budget, budget.seconds / 8)  # its untimed round, as above
        progress("wandb init done", budget)
        results["wandb run.log 30 scalars"] = time_calls(wandb_run.call, calls, WARMUP, budget, share)
        progress("wandb done", budget)
        if mlflow.start(deadline_s=min(90.0, max(budget.left() - 30, 5.0))):
            results["mlflow log_metrics 30 scalars"] = time_calls(mlflow.call, calls, 50, budget, share)
        else:
            results["mlflow log_metrics 30 scalars"] = mlflow.why_not or "n/a"
        progress("mlflow done", budget)
        lin.client.flush(timeout_s=60)
        drops = lin.client.stats()
    finally:
        # each step runs even if an earlier one raised: no server may outlive the script
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(service.stop)
            cleanup.callback(mlflow.close)
            if wandb_run is not None:
                cleanup.callback(wandb_run.close)
            if lin is not None:
                cleanup.callback(lin.client.close, timeout_s=10)
    report(results, drops, calls, torch_threads())
    return 0


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def report(results: dict[str, np.ndarray | str], stats: dict[str, Any], calls: int, threads: int) -> None:
    c.print_header("client_cost: training-thread cost per call (batch 256, 4 tasks 50/500/2k/10k classes, "
                   "top-3, subsets rarity x3 + mask x2)",
                   [f"{calls} timed calls per contender after warm-up; client -> real service subprocess "
                    "on 127.0.0.1 (msgpack); steady state: the topk= forms and wandb run.log each run one "
                    "identical untimed round first",
                    f"torch intra-op threads: {threads} (torch's 2-thread pool is 3-60x slower on this VM, "
                    "see README)"])
    medians = {k: float(np.median(v)) for k, v in results.items() if isinstance(v, np.ndarray) and len(v)}
    wandb_med = medians.get("wandb run.log 30 scalars", float("nan"))
    tm_med = medians.get("torchmetrics 4x(top1+top3).update", float("nan"))
    rows = []
    for name, value in results.items():
        if isinstance(value, str):
            rows.append([name, 0, "n/a", "n/a", "n/a", "n/a"])
            continue
        med = medians[name]
        rows.append([name, len(value), c.us(med), c.us(c.pct(value, 99)), c.ratio(med, wandb_med),
                     c.ratio(med, tm_med)])
    print(c.table(["contender", "calls", "median us", "p99 us", "median / wandb", "median / torchmetrics"],
                  rows))
    for name, value in results.items():
        if isinstance(value, str):
            print(f"  {name}: n/a ({value})")
    dropped = sum(stats.get("dropped", {}).values())
    print(f"\nclient stats after flush: queued={stats.get('queued')} delivered={stats.get('delivered')} "
          f"pending={stats.get('pending')} coalesced={stats.get('coalesced')} dropped={stats.get('dropped')}")
    print("\ntargets:")
    topk = medians.get(TOPK_ROW, float("nan"))
    print(f"  {TOPK_ROW} median <= 0.2x wandb (goal 0.1x): {topk / wandb_med:.3f}x -> "
          f"{c.verdict(topk <= 0.2 * wandb_med)}{' (goal met)' if topk <= 0.1 * wandb_med else ''}")
    np_labels = medians.get("log_batch topk=, labels as numpy str", float("nan"))
    print(f"  (same with labels as numpy str arrays: {np_labels / wandb_med:.3f}x -> "
          f"{c.verdict(np_labels <= 0.2 * wandb_med)})")
    for name in (TOPK_ROW, "log_batch logits= numpy f32", "log_batch logits= torch f32"):
        if name in medians:
            med = medians[name]
            print(f"  {name} median <= torchmetrics: {med / tm_med:.3f}x -> {c.verdict(med <= tm_med)}")
    print(f"  client drops == 0: {dropped} -> {c.verdict(dropped == 0)}")


if __name__ == "__main__":
    sys.exit(main())
