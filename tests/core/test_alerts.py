"""Alert rules: parsing like the rest of the config, firing against independent references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.core.alerts import Alert, AlertBook, parse_rules
from service.core.errors import ConfigError
from service.core.spec import parse_spec


def _config(*rules: Any) -> dict[str, Any]:
    return {"METRICS": {"STEP_INTERVAL": 10, "ALERTS": list(rules)}}


def test_rules_parse_with_defaults_and_from_schedule_metrics() -> None:
    rules = parse_rules(_config({"KEY": "train/loss", "ABOVE": 5}, {"KEY": "val/chain_accuracy", "BELOW": 1.5,
                                                                    "NAME": "chain low", "LEVEL": "error"}))
    assert [(r.key, r.condition, r.threshold, r.name, r.level) for r in rules] == [
        ("train/loss", "ABOVE", 5.0, "train/loss above 5.0", "WARN"),
        ("val/chain_accuracy", "BELOW", 1.5, "chain low", "ERROR")]
    nested = parse_rules({"SCHEDULE": {"METRICS": {"ALERTS": [{"KEY": "val/loss", "NO_IMPROVEMENT_EPOCHS": 3}]}}})
    assert nested[0].describe() == "val/loss no improvement for 3 epochs"
    assert parse_rules(None) == () and parse_rules({"METRICS": {}}) == ()


@pytest.mark.parametrize(("alerts", "needle"), [
    ({"KEY": "x"}, "METRICS.ALERTS: expected a list"),
    ([{"KEY": "train/loss", "ABOVE": 5, "THRESHOLD": 1}], "METRICS.ALERTS[0]: unknown key(s) ['THRESHOLD']"),
    ([{"KEY": "a", "ABOVE": 1}, {"KEY": "b", "ABOVE": 1, "BELOW": 0}], "METRICS.ALERTS[1]: give exactly one of"),
    ([{"KEY": "train/loss"}], "METRICS.ALERTS[0]: give exactly one of ABOVE, BELOW, NO_IMPROVEMENT_EPOCHS, got none"),
    ([{"ABOVE": 1}], "METRICS.ALERTS[0].KEY: expected a non-empty printable string"),
    ([{"KEY": "", "ABOVE": 1}], "METRICS.ALERTS[0].KEY"),
    ([{"KEY": "a", "ABOVE": True}], "METRICS.ALERTS[0].ABOVE: expected a finite number, got True"),
    ([{"KEY": "a", "BELOW": "5"}], "METRICS.ALERTS[0].BELOW: expected a finite number, got '5'"),
    ([{"KEY": "a", "NO_IMPROVEMENT_EPOCHS": 0}], "METRICS.ALERTS[0].NO_IMPROVEMENT_EPOCHS: expected an integer"),
    ([{"KEY": "a", "NO_IMPROVEMENT_EPOCHS": 2.5}], "NO_IMPROVEMENT_EPOCHS: expected an integer number of epochs"),
    ([{"KEY": "a", "ABOVE": 1, "LEVEL": "CRITICAL"}], "METRICS.ALERTS[0].LEVEL: expected one of INFO, WARN, ERROR"),
    (["train/loss > 5"], "METRICS.ALERTS[0]: expected a mapping"),
])
def test_bad_rules_are_refused_naming_the_rule_and_the_key(alerts: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules({"METRICS": {"ALERTS": alerts}})
    assert needle in str(info.value)


def test_the_run_spec_validates_alerts_and_accepts_them_beside_the_schedule() -> None:
    raw = {"run_id": "r", "world_size": 1, "total_steps": 10, "tasks": [{"name": "t", "num_classes": 3}]}
    assert parse_spec({**raw, "config": _config({"KEY": "train/loss", "ABOVE": 5})}).schedule().intervals["step"] == 10
    with pytest.raises(ConfigError, match=r"METRICS.ALERTS\[0\]: unknown key"):
        parse_spec({**raw, "config": _config({"KEY": "train/loss", "ABOVE": 5, "TYPO": 1})})


def _expected_crossings(values: list[float], threshold: float, above: bool) -> list[int]:
    """Reference: an alert at each observation that is on the bad side while the previous was not."""
    bad = [(v > threshold) if above else (v < threshold) for v in values]
    return [i for i in range(len(values)) if bad[i] and (i == 0 or not bad[i - 1])]


@pytest.mark.parametrize("above", [True, False])
def test_above_and_below_fire_once_per_excursion(above: bool) -> None:
    rng = np.random.default_rng(7 if above else 8)
    values = [float(v) for v in rng.normal(0.0, 1.0, 400)]
    book = AlertBook(parse_rules(_config({"KEY": "k", "ABOVE" if above else "BELOW": 0.5 if above else -0.5})))
    fired = []
    for i, value in enumerate(values):
        other = {"other": 1.0} if i % 3 else {}  # emissions without the key change nothing
        book.observe(i, other, {})
        fired += [a.step for a in book.observe(i, {"k": value, **other}, {})]
    assert fired == _expected_crossings(values, 0.5 if above else -0.5, above)
    assert 5 < len(fired) < 200


def _expected_stagnation(values: list[float], epochs: int, higher_is_better: bool) -> list[int]:
    """Reference: fire when exactly ``epochs`` observations passed since the last strict improvement."""
    out, last_best = [], 0
    for i in range(1, len(values)):
        best = max(values[:i]) if higher_is_better else min(values[:i])
        if (values[i] > best) if higher_is_better else (values[i] < best):
            last_best = i
        elif i - last_best == epochs:
            out.append(i)
    return out


@pytest.mark.parametrize("direction", ["min", "max"])
def test_no_improvement_follows_the_keys_direction(direction: str) -> None:
    rng = np.random.default_rng(11)
    values = [float(v) for v in np.round(rng.normal(0.0, 1.0, 300).cumsum() * (-1 if direction == "min" else 1), 1)]
    book = AlertBook(parse_rules(_config({"KEY": "val/loss", "NO_IMPROVEMENT_EPOCHS": 3, "LEVEL": "INFO"})))
    fired = [a for i, v in enumerate(values) for a in book.observe(i, {"val/loss": v}, {"val/loss": direction})]
    assert [a.step for a in fired] == _expected_stagnation(values, 3, direction == "max")
    assert fired and {a.level for a in fired} == {"INFO"}


def test_no_improvement_without_a_direction_never_fires() -> None:
    book = AlertBook(parse_rules(_config({"KEY": "custom/x", "NO_IMPROVEMENT_EPOCHS": 1})))
    assert [book.observe(i, {"custom/x": 1.0}, {"custom/x": None}) for i in range(5)] == [[]] * 5


def test_nonfinite_counts_from_pipeline_and_custom_name_the_rank() -> None:
    book = AlertBook()
    assert book.observe_scalars(1, "lr", 5, {"nonfinite/loss": 1.0}) == []
    assert book.observe_scalars(1, "custom", 5, {"nonfinite/loss": 0.0, "acc": 3.0}) == []
    fired = book.observe_scalars(2, "pipeline", 7, {"nonfinite/loss": 2.0})
    assert [a.to_dict() for a in fired] == [{
        "name": "nonfinite", "level": "ERROR", "key": "pipeline/nonfinite/loss", "step": 7, "value": 2.0,
        "rule": "nonfinite", "message": "rank 2 reported 2 non-finite loss at step 7", "rank": 2}]


def _check_stalls(book: AlertBook, now: float, seen: dict[int, float], step: int) -> list[Alert]:
    found = book.stalls(now, seen, step, threshold_s=60)
    assert book.stalls(now, seen, step, threshold_s=60) == found  # asking changes nothing
    for alert in found:
        book.record(alert)
    return found


def test_stall_fires_once_per_silence_with_an_injected_clock() -> None:
    book = AlertBook()
    seen = {0: 100.0, 1: 100.0}
    assert _check_stalls(book, 150.0, seen, 9) == []
    seen[0] = 155.0
    fired = _check_stalls(book, 170.0, seen, 9)
    assert [(a.name, a.rank, a.value) for a in fired] == [("stall", 1, 70.0)]
    assert _check_stalls(book, 500.0, {1: 100.0}, 9) == []  # still the same silence
    book.seen(1)
    assert [a.rank for a in _check_stalls(book, 700.0, {1: 600.0}, 12)] == [1]
    assert [a.name for a in book.fired] == ["stall", "stall"]


def test_restore_alert_restarts_tracking_and_keeps_history() -> None:
    book = AlertBook(parse_rules(_config({"KEY": "k", "ABOVE": 1})))
    assert len(book.observe(1, {"k": 2.0}, {})) == 1
    assert [a.name for a in book.restored(0, "abcdef0123456789")] == ["restore"]
    assert [a.step for a in book.observe(2, {"k": 2.0}, {})] == [2]  # still above after the rollback: said again
    assert [a.name for a in book.fired] == ["k above 1.0", "restore", "k above 1.0"]


def test_a_book_restored_from_its_dict_continues_like_the_original() -> None:
    rules = parse_rules(_config({"KEY": "k", "ABOVE": 0.3}, {"KEY": "k", "NO_IMPROVEMENT_EPOCHS": 2}))
    rng = np.random.default_rng(3)
    values = [float(v) for v in rng.normal(0, 1, 200)]
    whole, first = AlertBook(rules), AlertBook(rules)
    for i, v in enumerate(values):
        whole.observe(i, {"k": v}, {"k": "max"})
    for i, v in enumerate(values[:90]):
        first.observe(i, {"k": v}, {"k": "max"})
    for book in (first, whole):
        for alert in book.stalls(1e9, {3: 0.0}, 89, 1.0):
            book.record(alert)
    second = AlertBook.from_dict(rules, first.to_dict())
    for i, v in enumerate(values[90:], start=90):
        second.observe(i, {"k": v}, {"k": "max"})
    assert sorted(second.fired, key=_order) == sorted(whole.fired, key=_order)
    assert second.stalls(2e9, {3: 0.0}, 300, 1.0) == []  # the stall stays known


def _order(alert: Alert) -> tuple[int, str]:
    return alert.step, alert.name
