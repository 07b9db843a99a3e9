"""The wandb sink's queueing, ordering, backoff and lifecycle, with fake wandb runs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from service.sinks.wandb import WandbSink
from tests.sinks.sink_fakes import BlockingRun, FakeRun, em, spec


def fake_sink(tmp_path: Path, run: FakeRun, closing: list[Any], **kwargs: Any) -> WandbSink:
    sink = WandbSink(tmp_path, mode="offline", init_fn=lambda **_: run, **kwargs)
    closing.append(sink)
    return sink


def lr(run_id: str, step: int) -> Any:
    return em(run_id, step, "lr", {"train/lr/backbone": float(step)})


def test_one_log_per_step_in_order_from_the_worker_only(tmp_path: Path, closing: list[Any]) -> None:
    run = FakeRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("r", spec("r"))
    sink.emit(
        [em("r", 5, "custom", {"custom/a": 1.0}), em("r", 5, "gradnorm", {"gradnorm/x": 2.0})]
    )
    sink.emit([em("r", 7, "epoch", {"val/loss": 0.5, "val/acc1_taxa_L10": 50.0})])
    sink.emit([em("r", 6, "custom", {"custom/a": 3.0}), em("r", 9, "console", {"train/loss": 9.0})])
    assert sink.finish_run("r", {"final_val_loss": 0.5}, timeout_s=10) == "finished"
    assert run.logged == [
        (5, {"custom/a": 1.0, "gradnorm/x": 2.0}),
        (6, {"custom/a": 3.0}),
        (7, {"val/loss": 0.5, "val/acc1_taxa_L10": 50.0}),
    ]
    assert run.defined == {"val/loss": "min", "val/acc1_taxa_L10": "max"}
    assert run.summary == {"final_val_loss": 0.5} and run.finished
    assert run.thread_names == {"linnaeus-wandb"}


def test_wandb_rows_are_the_rows_the_core_hands_over(tmp_path: Path, closing: list[Any]) -> None:
    """Step and console windows alone make no row; a wandb emission's carried window is in its row."""
    run = FakeRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("r", spec("r"))
    sink.emit(
        [
            em("r", 20, "step", {"train/loss": 2.0}),
            em("r", 20, "console", {"train/loss": 2.0}),
            em("r", 25, "wandb", {"core/global_step": 25}, carried={"train/loss": 2.0}),
            em("r", 30, "step", {"train/loss": 3.0}),
            em("r", 40, "wandb", {"core/global_step": 40, "train/step_avg_loss": 2.5}, carried={"train/loss": 3.0}),
        ]
    )
    assert sink.finish_run("r", {}, timeout_s=10) == "finished"
    assert run.logged == [
        (25, {"train/loss": 2.0, "core/global_step": 25}),
        (40, {"train/loss": 3.0, "core/global_step": 40, "train/step_avg_loss": 2.5}),
    ]
    assert run.defined == {"train/loss": "min", "train/step_avg_loss": "min"}


def test_emit_never_waits_for_a_blocked_log_and_drops_the_oldest_beyond_the_bound(
    tmp_path: Path, closing: list[Any]
) -> None:
    run = BlockingRun()
    sink = fake_sink(tmp_path, run, closing, max_pending_rows=100)
    sink.open_run("slow", spec("slow"))
    sink.emit([lr("slow", 0), lr("slow", 1)])  # row 0 is sealed, the worker blocks in log
    assert run.entered.wait(10)
    for step in range(2, 1002):
        sink.emit([lr("slow", step)])
    assert run.in_call and not run.release.is_set()  # 1000 emits returned while log waits
    status = sink.status("slow")
    assert (status["pending_rows"], status["dropped_rows"], status["rows_logged"]) == (100, 901, 0)
    run.release.set()
    assert sink.finish_run("slow", {}, timeout_s=10) == "finished"
    assert [step for step, _ in run.logged] == [0, *range(902, 1002)]


def test_a_late_emission_for_a_pending_step_is_inserted_in_order(
    tmp_path: Path, closing: list[Any]
) -> None:
    run = BlockingRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("r", spec("r"))
    sink.emit([lr("r", 10), lr("r", 20)])
    assert run.entered.wait(10)  # step 10 is in flight, 20 is open
    sink.emit([lr("r", 30), lr("r", 15), lr("r", 10)])
    run.release.set()
    assert sink.finish_run("r", {}, timeout_s=10) == "finished"
    assert [step for step, _ in run.logged] == [10, 15, 20, 30]
    assert sink.status("r")["skipped_rows"] == 1  # step 10 was already handed to wandb


def test_a_resumed_wandb_run_continues_after_its_last_step(
    tmp_path: Path, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    run = FakeRun(resumed=True, starting_step=31)
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("r", spec("r"))
    assert sink.flush(timeout_s=10)  # the run is started
    sink.emit([lr("r", 20), lr("r", 30), lr("r", 31)])
    assert sink.finish_run("r", {}, timeout_s=10) == "finished"
    assert [step for step, _ in run.logged] == [31]
    assert sink.status("r")["skipped_rows"] == 2
    assert sum("already sent" in r.getMessage() for r in caplog.records) == 1


def test_finish_reports_timeout_and_failure(tmp_path: Path, closing: list[Any]) -> None:
    blocked = BlockingRun(block_finish=True)
    sink = fake_sink(tmp_path, blocked, closing)
    sink.open_run("b", spec("b"))
    assert sink.finish_run("b", {}, timeout_s=0.05) == "timeout"
    assert sink.status("b")["state"] == "finishing"
    blocked.release.set()
    assert sink.finish_run("b", {}, timeout_s=10) == "finished"

    second_attempt = threading.Event()
    attempts: list[int] = []

    def broken_init(**_: Any) -> Any:
        attempts.append(1)
        if len(attempts) >= 2:
            second_attempt.set()
        raise ConnectionError("no route to wandb")

    broken = WandbSink(
        tmp_path, mode="offline", retry_initial_s=0.001, retry_max_s=0.001, init_fn=broken_init
    )
    broken.open_run("x", spec("x"))
    assert second_attempt.wait(10)  # the first failure is recorded before the second try
    outcome = broken.finish_run("x", {}, timeout_s=0.01)
    assert outcome.startswith("failed: wandb init raised ConnectionError: no route to wandb")
    assert broken.status("x")["state"] == "retrying" and broken.status("x")["failures"] >= 1
    broken.close(timeout_s=0.01)  # gives up on the run at the deadline and stops the worker
    assert broken.status("x")["state"] == "retrying"


def test_disabled_runs_touch_no_wandb(wandb_env: Path, tmp_path: Path, closing: list[Any]) -> None:
    def never(**_: Any) -> Any:
        raise AssertionError("wandb.init must not be called for a disabled run")

    sink = WandbSink(tmp_path / "base", init_fn=never)
    closing.append(sink)
    sink.open_run("off", spec("off", WANDB={"ENABLED": False}))
    sink.emit([lr("off", 1), lr("off", 2)])
    assert sink.finish_run("off", {"final_val_loss": 1.0}, timeout_s=1) == "disabled"
    assert sink.status("off")["state"] == "disabled"
    assert sink.status("off")["rows_logged"] == 0
    assert sink.flush(timeout_s=1)
    assert not (tmp_path / "base").exists() and not any(wandb_env.iterdir())


def test_an_invalid_experiment_section_disables_the_run_with_a_reason(
    tmp_path: Path, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    sink = fake_sink(tmp_path, FakeRun(), closing)
    sink.open_run("bad", spec("bad", WANDB={"ENABLD": True}))
    sink.emit([lr("bad", 1)])
    status = sink.status("bad")
    assert status["state"] == "config_error" and "ENABLD" in status["last_error"]
    assert sink.finish_run("bad", {}, timeout_s=1).startswith("failed: EXPERIMENT.WANDB: unknown")
    assert any("ENABLD" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_delete_finishes_and_forgets_the_run(tmp_path: Path, closing: list[Any]) -> None:
    run = FakeRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("d", spec("d"))
    assert sink.flush(timeout_s=10)
    sink.delete_run("d")
    assert sink.status("d")["state"] == "unknown"
    sink.close(timeout_s=10)  # the worker retires deleted runs before it stops
    assert run.finished


def test_close_finishes_open_runs_and_later_calls_are_harmless(
    tmp_path: Path, closing: list[Any]
) -> None:
    run = FakeRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("c", spec("c"))
    sink.emit([lr("c", 1), em("c", 1, "final", {"final_train_loss": 0.1})])
    sink.close(timeout_s=10)
    assert run.finished and run.logged == [(1, {"train/lr/backbone": 1.0})]
    assert run.summary == {"final_train_loss": 0.1}
    sink.emit([lr("c", 2)])
    sink.close(timeout_s=1)
    assert sink.finish_run("c", {}, timeout_s=1) == "finished"
    assert sink.status("c")["state"] == "finished"


def test_emit_ignores_unknown_runs_and_groups(tmp_path: Path, closing: list[Any]) -> None:
    run = FakeRun()
    sink = fake_sink(tmp_path, run, closing)
    sink.open_run("r", spec("r"))
    sink.emit([em("nobody", 1, "lr", {}), em("r", 1, "no-such-group", {"x": 1.0})])
    sink.emit([em("r", 2, "lr", {"train/lr/x": 2.0})])
    assert sink.finish_run("r", {}, timeout_s=10) == "finished"
    assert run.logged == [(2, {"train/lr/x": 2.0})]
    assert sink.status("nobody")["state"] == "unknown"


def test_mode_and_directory_come_from_the_environment(
    wandb_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WandbSink(tmp_path).mode == "offline"
    assert WandbSink(tmp_path).dir == wandb_env
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_DIR")
    assert WandbSink(tmp_path).dir == tmp_path
    assert WandbSink(tmp_path).mode == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert WandbSink(tmp_path).mode == "online"
    assert WandbSink(tmp_path, mode="offline").mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbSink(tmp_path).mode == "disabled"
    with pytest.raises(ValueError, match="mode must be one of"):
        WandbSink(tmp_path, mode="sometimes")
