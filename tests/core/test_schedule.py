"""METRICS section: intervals, fractions, errors (DESIGN §4)."""

from __future__ import annotations

import pytest

from service.core.errors import ConfigError
from service.core.schedule import resolve_schedule


@pytest.mark.parametrize("config", [None, {}, {"EXPERIMENT": {"NAME": "x"}}, {"SCHEDULE": {"LR": 1}}])
def test_absent_section_applies_the_seed_defaults(config: dict[str, object] | None) -> None:
    # DESIGN §4: STEP 100, CONSOLE 200, WANDB 100, LR 200, PIPELINE 500 (issue 14, finding 1)
    schedule = resolve_schedule(config, 1000)
    assert dict(schedule.intervals) == {"step": 100, "console": 200, "wandb": 100, "lr": 200, "pipeline": 500}
    assert schedule.source == "default"


@pytest.mark.parametrize("config", [{"METRICS": {}}, {"SCHEDULE": {"METRICS": {}}}])
def test_an_empty_section_disables_everything(config: dict[str, object]) -> None:
    schedule = resolve_schedule(config, 100)
    assert set(schedule.intervals.values()) == {0}
    assert schedule.source == "config"


@pytest.mark.parametrize(("fraction", "total", "expected"), [
    (0.1, 100, 10), (0.015, 100, 2), (0.001, 100, 1), (1.0, 7, 7), (0.5, 5, 2), (0.25, 10, 2), (0.35, 10, 4),
])
def test_fraction_rounds_and_is_at_least_one(fraction: float, total: int, expected: int) -> None:
    # expected = max(1, round(fraction * total)) with Python's round-half-even, worked by hand
    assert resolve_schedule({"METRICS": {"STEP_FRACTION": fraction}}, total).intervals["step"] == expected


def test_schedule_metrics_location_and_both_locations() -> None:
    nested = {"SCHEDULE": {"METRICS": {"LR_INTERVAL": 5}}}
    assert resolve_schedule(nested, 10).intervals["lr"] == 5
    with pytest.raises(ConfigError, match="both METRICS and SCHEDULE.METRICS"):
        resolve_schedule({"METRICS": {}, **nested}, 10)


def test_both_interval_and_fraction_names_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"WANDB_INTERVAL=5.*WANDB_FRACTION=0.1"):
        resolve_schedule({"METRICS": {"WANDB_INTERVAL": 5, "WANDB_FRACTION": 0.1}}, 100)


def test_zero_disables_and_zero_plus_value_is_fine() -> None:
    s = resolve_schedule({"METRICS": {"STEP_INTERVAL": 0, "STEP_FRACTION": 0, "LR_INTERVAL": 3, "LR_FRACTION": 0}}, 50)
    assert s.intervals["step"] == 0 and s.intervals["lr"] == 3
    assert not any(s.fires("step", k) for k in range(0, 60))


@pytest.mark.parametrize("metrics", [
    {"STEP_INTERVALL": 5}, {"step_interval": 5},
])
def test_unknown_keys_are_rejected_by_name(metrics: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(metrics))):
        resolve_schedule({"METRICS": metrics}, 10)


@pytest.mark.parametrize("metrics", [
    {"STEP_INTERVAL": -1}, {"STEP_INTERVAL": 2.5}, {"STEP_INTERVAL": True}, {"STEP_FRACTION": 1.5},
    {"STEP_FRACTION": -0.1}, {"STEP_FRACTION": "0.1"}, {"CONSOLE_INTERVAL": "10"},
])
def test_bad_values_are_rejected(metrics: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(metrics))):
        resolve_schedule({"METRICS": metrics}, 10)


def test_firing_steps_include_step_zero_and_last_step() -> None:
    s = resolve_schedule({"METRICS": {"STEP_INTERVAL": 4}}, 12)
    assert s.fires("step", 0) and s.fires("step", 12) and not s.fires("step", 13)
    assert [s.next_firing("step", k) for k in (0, 1, 4, 5, 12, 13)] == [0, 4, 4, 8, 12, 16]
    assert s.next_firing("lr", 5) is None
