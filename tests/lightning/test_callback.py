"""MetricsCallback in a real Lightning DDP job (2 CPU ranks, gloo, ddp_spawn) against a real service.

The job (``job.py``) computes torchmetrics ``MulticlassAccuracy`` (micro, top-1 and top-3)
in the same job, train and val, on bf16 (tied) and fp32 logits; the service's epoch
values must equal them. A crash after a checkpoint and a resume with ``ckpt_path=`` must
give the same history and summary as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("lightning")
pytest.importorskip("torchmetrics")

from tests.e2e.conftest import quiet_service

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("job.py")
TIMING = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "core/")
KEY = {"train": "train/epoch_acc{k}_{task}", "val": "val/acc{k}_{task}", "val_mask": "val_mask/acc{k}_{task}"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with quiet_service(tmp_path_factory, "lightning") as served:
        yield served


def run_job(url: str, workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = workdir / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(JOB), "--url", url, "--out", str(out), "--ckpt-dir",
                           str(workdir / "ckpt"), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return done, json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture(scope="module")
def reference(url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done, report = run_job(url, Path(tmp_path_factory.mktemp("reference")))
    assert done.returncode == 0, done.stderr[-4000:]
    return report


def history(url: str, run_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/v1/runs/{run_id}/history", timeout=30)
    reply.raise_for_status()
    return dict(reply.json()["series"])


def untimed(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not any(t in k for t in TIMING)}


def test_ranks_agree_on_one_generated_run_id(url: str, reference: dict[str, Any]) -> None:
    run_id = reference["run_id"]
    assert reference["run_ids"] == [run_id, run_id]
    info = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()
    assert info["world_size"] == 2 and info["missing_ranks"] == [] and info["status"] == "finished"
    assert reference["stats"]["pending"] == 0 and not any(reference["stats"]["dropped"].values())


def test_epoch_accuracies_equal_torchmetrics_in_the_same_job(url: str, reference: dict[str, Any]) -> None:
    assert reference["ties"] > 100, "the bf16 logits must tie often for this test to mean something"
    series = history(url, reference["run_id"])
    rows = reference["torchmetrics"]
    assert {(r["phase"], r["k"], r["task"]) for r in rows} == {
        (p, k, t) for p in KEY for k in (1, 3) for t in ("genus", "species")}
    for row in rows:
        key = KEY[row["phase"]].format(k=row["k"], task=row["task"])
        steps, values = series[key]["steps"], series[key]["values"]
        assert len(steps) == 3, (key, steps)  # one value per epoch: the sanity check was not counted
        assert values[row["epoch"]] == pytest.approx(row["value"], abs=1e-4), (key, row)


def test_learning_rates_come_from_the_optimizer(url: str, reference: dict[str, Any]) -> None:
    series = history(url, reference["run_id"])
    # SGD groups "backbone" (0.1) and "heads" (0.05), StepLR(step_size=2, gamma=0.5) per step
    assert series["train/lr/backbone"]["steps"] == list(range(1, 13))
    assert series["train/lr/backbone"]["values"] == [0.1 * 0.5 ** ((s - 1) // 2) for s in range(1, 13)]
    assert series["train/lr/heads"]["values"][:3] == [0.05, 0.05, 0.025]


def test_a_crash_and_resume_from_a_lightning_checkpoint_equals_the_uninterrupted_run(
    url: str, reference: dict[str, Any], tmp_path: Path
) -> None:
    crashed, _ = run_job(url, tmp_path, "--run-id", "lightning-crash", "--crash-at", "7")
    assert crashed.returncode != 0
    checkpoint = tmp_path / "ckpt" / "epoch=0.ckpt"
    assert checkpoint.exists(), crashed.stderr[-4000:]
    resumed, report = run_job(url, tmp_path, "--resume", str(checkpoint))  # no run id: the checkpoint's
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert report["run_id"] == "lightning-crash"
    expected, got = untimed(history(url, reference["run_id"])), untimed(history(url, "lightning-crash"))
    assert sorted(got) == sorted(expected)
    different = {k: (expected[k], got[k]) for k in expected if got[k] != expected[k]}
    assert not different, dict(list(different.items())[:5])
    summaries = [httpx.get(f"{url}/v1/runs/{r}/summary", timeout=10).json()["summary"]
                 for r in (reference["run_id"], "lightning-crash")]
    assert untimed(summaries[1]) == untimed(summaries[0]) and summaries[0]
    assert httpx.get(f"{url}/v1/runs/lightning-crash", timeout=10).json()["counters"]["restores"] >= 1
