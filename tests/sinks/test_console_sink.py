"""The console sink: one compact line per console window, closed epoch and finish."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from service.sinks.console import LOGGER_NAME, ConsoleSink
from tests.sinks.sink_fakes import em, spec


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]


@pytest.fixture
def sink(caplog: pytest.LogCaptureFixture) -> ConsoleSink:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    console = ConsoleSink()
    console.open_run("exp42", spec("exp42"))
    return console


def test_progress_line_carries_the_numbers(
    sink: ConsoleSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.emit(
        [
            em(
                "exp42",
                120,
                "console",
                {
                    "train/loss": 1.23456,
                    "train/chain_accuracy": 45.678,
                    "train/partial_chain_accuracy": 50.1234,
                    "train/samples_per_sec": 812.34,
                    "train/eta_sec": 7384.4,
                    "train/acc1_taxa_L10": 70.0,
                },
            )
        ]
    )
    assert lines(caplog) == [
        "run exp42 step 120/1000 loss 1.2346 chain 45.68% partial 50.12% "
        "812.3 samples/s eta 2:03:04"
    ]


def test_missing_keys_are_left_out_and_other_groups_are_silent(
    sink: ConsoleSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.emit(
        [
            em("exp42", 10, "console", {"train/loss": 2.0, "train/eta_sec": float("inf")}),
            em("exp42", 10, "step", {"train/loss": 2.0}),
            em("exp42", 10, "wandb", {"core/train_loss": 2.0}),
            em("unknown-run", 3, "console", {"train/samples_per_sec": 5.0}),
        ]
    )
    assert lines(caplog) == [
        "run exp42 step 10/1000 loss 2.0000 eta ?",
        "run unknown-run step 3 5.0 samples/s",
    ]


def test_epoch_and_finish_lines(sink: ConsoleSink, caplog: pytest.LogCaptureFixture) -> None:
    sink.emit(
        [
            em(
                "exp42",
                250,
                "epoch",
                {
                    "val/loss": 0.98765,
                    "val/chain_accuracy": 56.781,
                    "val/partial_chain_accuracy": 60.0,
                    "val/subset/rarity/rare/chain_accuracy": 3.0,
                    "train/epoch_loss": 1.5,
                    "val/epoch_duration_sec": 12.0,
                },
            )
        ]
    )
    status = sink.finish_run(
        "exp42",
        {
            "final_val_loss": 0.9123,
            "final_val_chain_accuracy": 58.2,
            "final_val_acc1_taxa_L10": 80.0,
        },
        timeout_s=1,
    )
    assert status == "finished"
    assert lines(caplog) == [
        "run exp42 epoch closed at step 250: train loss 1.5000 | "
        "val loss 0.9877 chain 56.78% partial 60.00%",
        "run exp42 finished: final_val_loss 0.9123 final_val_chain_accuracy 58.20% (+1 more)",
    ]


def test_bad_values_never_raise(sink: ConsoleSink, caplog: pytest.LogCaptureFixture) -> None:
    sink.emit(
        [
            em("exp42", 1, "console", {"train/loss": "n/a", "train/eta_sec": None}),
            em("exp42", 2, "epoch", {"weird": object()}),
        ]
    )
    not_a_number: Any = "?"
    assert sink.finish_run("exp42", {"final_val_loss": not_a_number}, timeout_s=1) == "finished"
    assert lines(caplog) == [
        "run exp42 step 1/1000",
        "run exp42 epoch closed at step 2: 1 values",
        "run exp42 finished: (+1 more)",
    ]
    sink.delete_run("exp42")
    sink.close(timeout_s=1)
