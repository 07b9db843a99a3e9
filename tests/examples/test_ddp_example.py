"""examples/ddp_train.py against a real service: what it reports, and crash/resume exactness.

The example spawns 2 gloo ranks per invocation; four invocations (uninterrupted, crash,
resume, resume again) share one 90 s budget. The example is bitwise deterministic for a fixed seed (seeded
data and init, deterministic sampler order, exact model/optimizer/scheduler state in the
checkpoint, one intra-op thread), so the resumed run must equal the uninterrupted one
exactly, except for wall-clock keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess, free_port

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ddp_train.py"
RUN = "ddp-example"
STEPS, EPOCHS, WORLD = 12, 3, 2  # 4 steps per epoch: the checkpoint at 6 is mid-epoch
TIMING = ("samples_per_sec", "eta_sec", "epoch_duration_sec")  # wall-clock: differ run to run
BUDGET_S = 90.0
TASKS = ("family", "genus", "species")


class Budget:
    """One deadline for the whole module; every subprocess gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        assert left > 0, "the example tests ran over their 90 s budget"
        return left


@pytest.fixture(scope="module")
def budget() -> Budget:
    return Budget(BUDGET_S)


def run_example(url: str, budget: Budget, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(EXAMPLE), "--url", url, "--run-id", RUN, "--world-size", str(WORLD),
            "--steps", str(STEPS), "--epochs", str(EPOCHS), "--seed", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget.left())


def history(url: str) -> dict[str, dict[str, list[float]]]:
    reply = httpx.get(f"{url}/v1/runs/{RUN}/history", timeout=30)
    reply.raise_for_status()
    series: dict[str, dict[str, list[float]]] = reply.json()["series"]
    return series


def untimed(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not any(t in k for t in TIMING)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, budget: Budget) -> Iterator[tuple[str, Any]]:
    """An uninterrupted run on a fresh service: (service url, completed process)."""
    service = ServiceProcess(tmp_path_factory.mktemp("reference") / "data", free_port()).start(budget.left())
    try:
        done = run_example(service.url, budget)
        assert done.returncode == 0, done.stderr[-3000:]
        yield service.url, done
    finally:
        service.terminate()


def test_example_reports_every_phase_over_http_and_cli(reference: tuple[str, Any], budget: Budget) -> None:
    url, done = reference
    assert f"run {RUN} at step {STEPS}" in done.stdout
    run = httpx.get(f"{url}/v1/runs/{RUN}", timeout=10).json()
    assert run["world_size"] == WORLD and run["total_steps"] == STEPS and run["status"] == "finished"
    assert [t["name"] for t in run["tasks"]] == list(TASKS)
    per_rank = STEPS * 16 + EPOCHS * 2 * 32  # train batches + val and val_mask shards
    assert run["counters"]["samples"] == WORLD * per_rank

    series = history(url)
    steps = {key: s["steps"] for key, s in series.items()}
    for task in TASKS:  # train windows at STEP_INTERVAL 2, epoch values at 4, 8, 12
        assert steps[f"train/acc1_{task}"] == [2, 4, 6, 8, 10, 12]
        for phase in ("val", "val_mask"):
            assert steps[f"{phase}/acc1_{task}"] == [4, 8, 12]
            assert steps[f"{phase}/loss_{task}"] == [4, 8, 12]
    for key in ("train/loss", "train/chain_accuracy", "train/partial_chain_accuracy"):
        assert steps[key] == [2, 4, 6, 8, 10, 12]
    for key in ("train/epoch_loss", "val/loss", "val/chain_accuracy", "val_mask/partial_chain_accuracy"):
        assert steps[key] == [4, 8, 12]
    assert steps["train/step_avg_loss"] == [4, 8, 12]  # WANDB_INTERVAL 4
    assert steps["train/lr/backbone"] == steps["train/lr/heads"] == list(range(1, STEPS + 1))
    for name in ("queue_depths/batch_index_q", "cache/size", "throughput/prefetch_samples_per_sec"):
        assert steps[f"pipeline/{name}"] == [2, 4, 6, 8, 10, 12]
    assert steps["gradnorm/avg_norm"] == [3, 6, 9, 12]
    assert steps["custom/species_entropy"] == [4, 8, 12]
    values = {key: s["values"] for key, s in series.items()}
    assert values["pipeline/queue_depths/batch_index_q"] == [2.0, 0.0] * 3  # empties at epoch ends
    lrs = values["train/lr/backbone"]
    assert lrs[0] < lrs[2] and lrs[2] > lrs[-1] > 0  # warm-up, then cosine decay
    # val_mask masks every sample's metadata: its "masked" subset is the whole phase
    for metric in ("chain_accuracy", "acc1_species", "acc3_genus"):
        assert values[f"val_mask/subset/mask/masked/{metric}"] == values[f"val_mask/{metric}"]
    assert "val/subset/rarity/common/acc1_species" in values
    assert "train/subset/mask/unmasked/chain_accuracy" in values

    latest = httpx.get(f"{url}/v1/runs/{RUN}/metrics", timeout=10).json()
    assert latest["step"] == STEPS
    summary = httpx.get(f"{url}/v1/runs/{RUN}/summary", timeout=10).json()["summary"]
    assert {"final_train_loss", "final_val_loss", "final_val_chain_accuracy"} <= set(summary)

    show = subprocess.run([sys.executable, "-m", "service.cli", "show", RUN, "--url", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=budget.left())
    assert show.returncode == 0, show.stderr
    assert f"run {RUN} at step {STEPS}" in show.stdout
    shown = {line.split()[0] for line in show.stdout.splitlines()[2:]}
    assert {"train/loss", "train/acc1_species", "val/loss", "val_mask/loss", "train/lr/backbone",
            "train/lr/heads", "pipeline/queue_depths/batch_index_q", "gradnorm/avg_norm",
            "custom/species_entropy", "val/subset/rarity/rare/acc1_species"} <= shown
    assert shown == set(latest["metrics"])


def test_crash_and_resume_equals_the_uninterrupted_run(
    reference: tuple[str, Any], budget: Budget, tmp_path: Path
) -> None:
    expected_history = untimed(history(reference[0]))
    expected_summary = untimed(httpx.get(f"{reference[0]}/v1/runs/{RUN}/summary", timeout=10).json()["summary"])
    service = ServiceProcess(tmp_path / "data", free_port()).start(budget.left())
    try:
        prefix = str(tmp_path / "ckpt")
        crashed = run_example(service.url, budget, "--checkpoint", prefix, "--checkpoint-at", "6", "--crash-at", "9")
        assert crashed.returncode == 1, crashed.stderr[-3000:]
        assert "training stopped" in crashed.stderr
        states = [torch.load(f"{prefix}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
        assert [s["step"] for s in states] == [6, 6]
        assert states[0]["metrics"]["snapshot"] == states[1]["metrics"]["snapshot"]  # one consistent cut
        assert states[0]["metrics"]["snapshot"]["cut"]["watermark"] == 6
        served = httpx.get(f"{service.url}/v1/runs/{RUN}/checkpoints/6", params={"wait_s": 0}, timeout=10)
        assert served.json() == states[0]["metrics"]["snapshot"]  # torch.save/load(weights_only) kept it

        # The crash came within the client's batching delay of the checkpoint, so steps 7-9 may
        # never have reached the service. Resuming a second time from the same checkpoint, after
        # the first resume delivered steps 7-12 and finished the run, makes the service discard
        # delivered post-cut events for certain (DESIGN §3b: resuming twice from one checkpoint).
        for attempt in ("first resume", "second resume"):
            resumed = run_example(service.url, budget, "--checkpoint", prefix, "--resume")
            assert resumed.returncode == 0, (attempt, resumed.stderr[-3000:])
            got_history = untimed(history(service.url))
            assert sorted(got_history) == sorted(expected_history), attempt
            different = [k for k in expected_history if got_history[k] != expected_history[k]]
            assert not different, (attempt, {k: (expected_history[k], got_history[k]) for k in different[:5]})
            summary = httpx.get(f"{service.url}/v1/runs/{RUN}/summary", timeout=10).json()["summary"]
            assert untimed(summary) == expected_summary, attempt
        run = httpx.get(f"{service.url}/v1/runs/{RUN}", timeout=10).json()
        assert run["status"] == "finished" and run["counters"]["restores"] >= 1
    finally:
        service.terminate()
