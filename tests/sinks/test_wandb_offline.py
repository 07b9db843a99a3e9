"""The wandb sink against real offline wandb: what lands in the run file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import wandb

from service.core.emission import Notice
from service.sinks.wandb import WandbSink
from tests.sinks.sink_fakes import em, spec
from tests.sinks.wandb_reader import find_run_file, read_run

SECRET = "0123456789abcdef-not-a-real-key"
RUN = "exp1"


def wait_for_run_files() -> None:
    """Block until wandb-core has closed every stream.

    ``run.finish()`` returns once the exit record is acknowledged; the core closes the
    stream (flushing the run file's last block) right after. Tearing the wandb service
    down waits for exactly that; the next ``wandb.init`` starts a new service.
    """
    wandb.teardown()


def realistic_sequence() -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """Emissions as the run state produces them, and the rows wandb must end up with."""
    window10 = {"train/loss": 2.5, "train/chain_accuracy": 10.0, "train/acc1_taxa_L10": 30.0}
    window20 = {"train/loss": 2.0, "train/chain_accuracy": 20.0, "train/acc1_taxa_L10": 40.0}
    window30 = {"train/loss": 1.5, "train/chain_accuracy": 25.0, "train/acc1_taxa_L10": 45.0}
    wandb20 = {"train/step_avg_loss": 2.25, "core/train_loss": 2.0, "core/global_step": 20}
    wandb40 = {"train/step_avg_loss": 1.75, "core/train_loss": 1.5, "core/global_step": 40}
    epoch28 = {
        "train/epoch_loss": 2.1,
        "val/loss": 1.9,
        "val/chain_accuracy": 33.0,
        "val/subset/rarity/rare/chain_accuracy": 12.5,
    }
    emissions = [
        em(RUN, 10, "step", window10),
        em(RUN, 10, "lr", {"train/lr/backbone": 1e-4}),
        em(RUN, 10, "console", {"train/loss": 2.5}),
        em(RUN, 20, "step", window20),
        em(RUN, 20, "wandb", wandb20, carried=window20),
        em(RUN, 20, "lr", {"train/lr/backbone": 2e-4}),
        em(RUN, 20, "pipeline", {"pipeline/cache/size": 123.0}),
        em(RUN, 25, "gradnorm", {"gradnorm/avg_norm": 1.5, "gradnorm/weight/taxa_L10": 0.7}),
        em(RUN, 25, "custom", {"custom/my_metric": 3.0}),
        em(RUN, 30, "step", window30),
        em(RUN, 28, "epoch", epoch28),  # late: the epoch closed after step 30 was emitted
        em(RUN, 30, "lr", {"train/lr/backbone": 3e-4}),
        em(RUN, 40, "wandb", wandb40, carried=window30),  # the core carries the latest window at or before 40
        em(RUN, 40, "final", {"final_val_loss": 1.9}),
    ]
    expected = {
        10: {"train/lr/backbone": 1e-4},
        20: {**window20, **wandb20, "train/lr/backbone": 2e-4, "pipeline/cache/size": 123.0},
        25: {"gradnorm/avg_norm": 1.5, "gradnorm/weight/taxa_L10": 0.7, "custom/my_metric": 3.0},
        28: epoch28,
        30: {"train/lr/backbone": 3e-4},
        40: {**window30, **wandb40},
    }
    return emissions, expected


def test_rows_summary_config_and_restore_reach_the_run_file(
    wandb_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, closing: list[Any]
) -> None:
    caplog.set_level(logging.WARNING, logger="service.sinks.wandb")
    sink = WandbSink(tmp_path / "data", mode="offline")
    closing.append(sink)
    sink.open_run(
        RUN,
        spec(
            RUN,
            PROJECT="birds",
            NAME="swin",
            GROUP="ablation",
            TAGS=["a", "b"],
            WANDB={"ENABLED": True, "KEY": SECRET},
        ),
    )
    emissions, expected = realistic_sequence()
    sink.emit(emissions)
    assert sink.flush(timeout_s=30)

    # The trainer restores to step 20: everything up to 40 was sent already.
    window30b = {"train/loss": 1.4, "train/chain_accuracy": 26.0, "train/acc1_taxa_L10": 46.0}
    wandb50 = {"train/step_avg_loss": 1.45, "core/train_loss": 1.4, "core/global_step": 50}
    sink.emit(
        [
            em(RUN, 30, "step", window30b),
            em(RUN, 30, "lr", {"train/lr/backbone": 3e-4}),
            em(RUN, 35, "gradnorm", {"gradnorm/avg_norm": 1.1}),
            em(RUN, 40, "wandb", wandb40_again := {"core/global_step": 40}, carried=window30b),
            em(RUN, 50, "wandb", wandb50, carried=window30b),
        ]
    )
    assert wandb40_again
    expected[50] = {**window30b, **wandb50}
    finals = {"final_val_loss": 1.85, "final_val_chain_accuracy": 33.0, "final_train_loss": 2.1}
    assert sink.finish_run(RUN, finals, timeout_s=30) == "finished"

    status = sink.status(RUN)
    assert status["state"] == "finished"
    assert (status["rows_logged"], status["last_step"], status["skipped_rows"]) == (7, 50, 3)
    assert (status["failures"], status["dropped_rows"], status["pending_rows"]) == (0, 0, 0)
    assert status["mode"] == "offline" and status["wandb_run_id"] == RUN
    assert Path(status["dir"]).is_relative_to(wandb_env)

    wait_for_run_files()
    content = read_run(find_run_file(wandb_env, RUN))
    assert content.steps() == [10, 20, 25, 28, 30, 40, 50]
    assert content.user_rows() == expected
    assert {k: content.summary[k] for k in finals} == finals
    assert content.summary["train/loss"] == {"min": 1.4}
    assert content.summary["val/chain_accuracy"] == {"max": 33.0}
    assert content.config["run_id"] == RUN and content.config["world_size"] == 2
    assert content.config["tasks"][0] == {"name": "taxa_L10", "num_classes": 10, "null_index": 0}
    assert content.config["config"]["EXPERIMENT"]["WANDB"] == {"ENABLED": True}
    assert SECRET.encode() not in b"".join(
        p.read_bytes() for p in wandb_env.rglob("*") if p.is_file()
    )

    warnings = [r.getMessage() for r in caplog.records if r.name == "service.sinks.wandb"]
    assert sum("KEY is ignored" in m for m in warnings) == 1
    skipped = [m for m in warnings if "already sent" in m]
    assert len(skipped) == 1 and "steps <= 40" in skipped[0] and "from step 30" in skipped[0]


class FlakyRun:
    """A real wandb run whose first ``log`` raises."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.log_failures_left = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.log_failures_left:
            self.log_failures_left -= 1
            raise RuntimeError("log is broken this once")
        self._run.log(row, step=step)


def test_failing_init_and_log_are_retried_until_every_row_is_written(
    wandb_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.sinks.wandb")
    calls: list[dict[str, Any]] = []

    def flaky_init(**kwargs: Any) -> FlakyRun:
        calls.append(kwargs)
        if len(calls) <= 2:
            raise ConnectionError("wandb is down")
        return FlakyRun(wandb.init(**kwargs))

    sink = WandbSink(tmp_path, retry_initial_s=0.001, retry_max_s=0.01, init_fn=flaky_init)
    sink.open_run("flaky", spec("flaky"))
    sink.emit([em("flaky", s, "custom", {"custom/x": float(s)}) for s in range(1, 6)])
    sink.close(timeout_s=30)  # close finishes every open run

    status = sink.status("flaky")
    assert (status["state"], status["failures"], status["rows_logged"]) == ("finished", 3, 5)
    assert calls[-1]["mode"] == "offline" and calls[-1]["reinit"] == "create_new"
    assert calls[-1]["settings"]["console"] == "off" and calls[-1]["dir"] == str(wandb_env)
    assert calls[-1]["project"] == "linnaeus-metrics" and calls[-1]["resume"] == "allow"
    wait_for_run_files()
    rows = read_run(find_run_file(wandb_env, "flaky")).user_rows()
    assert rows == {s: {"custom/x": float(s)} for s in range(1, 6)}
    messages = [r.getMessage() for r in caplog.records if r.name == "service.sinks.wandb"]
    assert sum("ConnectionError" in m for m in messages) == 1  # two failures, one line
    assert sum("RuntimeError" in m for m in messages) == 1


def test_alerts_reach_the_run_file_in_order_with_their_levels(wandb_env: Path, tmp_path: Path,
                                                             closing: list[Any]) -> None:
    sink = WandbSink(tmp_path / "data", mode="offline")
    closing.append(sink)
    sink.open_run(RUN, spec(RUN))
    sink.emit([em(RUN, 10, "custom", {"custom/x": 2.5})])
    sink.alert(RUN, "train/loss above 2.0", "train/loss above 2.0: 2.5 at step 10", "WARN")
    # the runtime's way in: an alert notice (its detail is the alert as GET /v1/runs/{run} shows it)
    sink.notice(Notice(RUN, "alert", 12, {"name": "nonfinite " + "x" * 80, "level": "ERROR", "step": 12,
                                          "message": "rank 1 reported 1 non-finite loss at step 12"}))
    sink.notice(Notice(RUN, "restore", 12, {"snapshot_id": "abc"}))  # other notices do not reach wandb
    sink.alert("ghost", "never", "a run the sink does not know", "INFO")
    assert sink.finish_run(RUN, {}, timeout_s=30) == "finished"
    assert (sink.status(RUN)["alerts_sent"], sink.status(RUN)["failures"]) == (2, 0)
    wait_for_run_files()
    content = read_run(find_run_file(wandb_env, RUN))
    assert content.alerts == [("train/loss above 2.0", "train/loss above 2.0: 2.5 at step 10", "WARN"),
                              (("nonfinite " + "x" * 80)[:63], "rank 1 reported 1 non-finite loss at step 12", "ERROR")]
    assert content.user_rows() == {10: {"custom/x": 2.5}}
