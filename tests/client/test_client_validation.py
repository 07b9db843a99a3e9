"""Misuse raises at once (ValueError/TypeError naming the argument and value) and queues nothing."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from client import ClientClosed, ClientError, MetricsClient, StepAlreadyCompleted
from tests.client.client_fakes import TASKS, FakeService, random_batch

Make = Callable[..., MetricsClient]


def good_batch(size: int = 4) -> dict[str, Any]:
    data = random_batch(np.random.default_rng(0), size)
    return {"epoch": 0, "loss": 0.5, **data}


def with_(changes: dict[str, Any]) -> dict[str, Any]:
    kwargs = good_batch()
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            kwargs[outer] = {**kwargs[outer], inner: value}
        else:
            kwargs[key] = value
    return {k: v for k, v in kwargs.items() if v is not None}


BATCH_MISUSE = [
    ("unknown task", {"targets.order": np.zeros(4, dtype=int)}, ValueError, ["targets", "order"]),
    (
        "missing task",
        {"targets": {"genus": np.zeros(4, dtype=int)}},
        ValueError,
        ["targets", "species"],
    ),
    ("unknown task loss", {"task_losses": {"order": 0.1}}, ValueError, ["task_losses", "order"]),
    (
        "unknown logits task",
        {"topk": None, "logits": {"genus": np.zeros((4, 5)), "oops": np.zeros((4, 5))}},
        ValueError,
        ["logits", "oops"],
    ),
    (
        "topk 1-d",
        {"topk.genus": np.zeros(4, dtype=int)},
        ValueError,
        ["topk['genus']", "shape [4]"],
    ),
    (
        "topk batch size",
        {"topk.genus": np.zeros((3, 3), dtype=int)},
        ValueError,
        ["topk.genus", "[3, 3]"],
    ),
    (
        "topk k too small",
        {"topk.genus": np.zeros((4, 1), dtype=int)},
        ValueError,
        ["topk.genus", "[4, 1]"],
    ),
    (
        "targets disagree",
        {"targets.genus": np.zeros(3, dtype=int)},
        ValueError,
        ["targets", "'genus': 3"],
    ),
    (
        "empty batch",
        {"targets": {"genus": np.zeros(0, int), "species": np.zeros(0, int)}},
        ValueError,
        ["targets", "0"],
    ),
    (
        "target out of range",
        {"targets.genus": np.array([0, 1, 5, 2])},
        ValueError,
        ["targets.genus", "5"],
    ),
    (
        "negative target",
        {"targets.genus": np.array([0, -1, 2, 2])},
        ValueError,
        ["targets.genus", "-1"],
    ),
    (
        "topk out of range",
        {"topk.species": np.full((4, 3), 11)},
        ValueError,
        ["topk.species", "11"],
    ),
    ("float targets", {"targets.genus": np.zeros(4)}, TypeError, ["targets['genus']", "float64"]),
    ("nan loss", {"loss": math.nan}, ValueError, ["loss", "nan"]),
    (
        "inf task loss",
        {"task_losses": {"genus": math.inf}},
        ValueError,
        ["task_losses['genus']", "inf"],
    ),
    ("string loss", {"loss": "0.5"}, TypeError, ["loss", "'0.5'"]),
    (
        "both topk and logits",
        {"logits": {"genus": np.zeros((4, 5)), "species": np.zeros((4, 10))}},
        ValueError,
        ["topk", "logits", "both"],
    ),
    ("neither topk nor logits", {"topk": None}, ValueError, ["topk", "logits", "neither"]),
    (
        "logits classes",
        {"topk": None, "logits": {"genus": np.zeros((4, 6)), "species": np.zeros((4, 10))}},
        ValueError,
        ["logits['genus']", "[batch, 5]", "[4, 6]"],
    ),
    (
        "subset length",
        {"subsets": {"rarity": ["a", "b"]}},
        ValueError,
        ["subsets['rarity']", "4 labels"],
    ),
    (
        "subset label name",
        {"subsets": {"rarity": ["a b", "c", "c", "c"]}},
        ValueError,
        ["rarity", "'a b'"],
    ),
    ("reserved family", {"subsets": {"null": ["a"] * 4}}, ValueError, ["subsets", "'null'"]),
    (
        "subset int labels",
        {"subsets": {"rarity": [1, 2, 3, 4]}},
        TypeError,
        ["subsets['rarity']", "int64"],
    ),
    (
        "sample losses nan",
        {"sample_losses": [0.1, math.nan, 0.2, 0.3]},
        ValueError,
        ["sample_losses", "nan"],
    ),
    ("sample losses shape", {"sample_losses": [0.1, 0.2]}, ValueError, ["sample_losses", "[2]"]),
    ("targets not a dict", {"targets": [1, 2]}, TypeError, ["targets", "list"]),
    ("bad phase", {"phase": "val idation"}, ValueError, ["phase", "'val idation'"]),
    ("negative epoch", {"epoch": -2}, ValueError, ["epoch", "-2"]),
]


@pytest.mark.parametrize(
    ("changes", "error", "fragments"),
    [case[1:] for case in BATCH_MISUSE],
    ids=[case[0] for case in BATCH_MISUSE],
)
def test_log_batch_misuse(
    make_client: Make, changes: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    mc = make_client()
    with pytest.raises(error) as caught:
        mc.log_batch(1, **with_(changes))
    assert isinstance(caught.value, ClientError)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert mc.stats()["queued"] == 0


STEP_MISUSE = [
    (-1, ValueError, ["step", "-1"]),
    (1.5, TypeError, ["step", "1.5"]),
    ("3", TypeError, ["step", "'3'"]),
    (True, TypeError, ["step", "True"]),
    (2**60, ValueError, ["step", str(2**60)]),
]


@pytest.mark.parametrize(("step", "error", "fragments"), STEP_MISUSE)
def test_bad_steps_are_refused_by_every_log_method(
    make_client: Make, step: Any, error: type[Exception], fragments: list[str]
) -> None:
    mc = make_client()
    calls: list[Callable[[], None]] = [
        lambda: mc.log_batch(step, **good_batch()),
        lambda: mc.log_lr(step, {"backbone": 0.1}),
        lambda: mc.log_pipeline(step, {"cache/size": 1}),
        lambda: mc.log_gradnorm(step, {"avg_norm": 1.0}),
        lambda: mc.log_custom(step, {"x": 1.0}),
    ]
    for call in calls:
        with pytest.raises(error) as caught:
            call()
        assert all(f in str(caught.value) for f in fragments)
    assert mc.stats()["queued"] == 0


def test_numpy_integer_steps_are_accepted(service: FakeService, make_client: Make) -> None:
    mc = make_client()
    mc.log_lr(np.int64(3), {"backbone": 0.1})
    mc.log_batch(np.int32(4), **good_batch())
    assert mc.flush(5)
    assert [e.step for e in service.events() if hasattr(e, "step")] == [3, 4]


def test_a_completed_step_is_refused(make_client: Make) -> None:
    mc = make_client()
    mc.log_batch(5, **good_batch())
    mc.log_lr(5, {"backbone": 0.1})  # the same step is still open
    with pytest.raises(StepAlreadyCompleted) as caught:
        mc.log_batch(3, **good_batch())
    assert isinstance(caught.value, ValueError)
    assert "step 3" in str(caught.value) and "completed" in str(caught.value)
    mc.log_batch(2, **{**good_batch(), "phase": "val"})  # validation is not bound by it
    assert mc.flush(5)
    calls: list[Callable[[], None]] = [
        lambda: mc.log_batch(5, **good_batch()),
        lambda: mc.log_lr(5, {"backbone": 0.1}),
        lambda: mc.log_custom(5, {"x": 1.0}),
    ]
    for call in calls:
        with pytest.raises(StepAlreadyCompleted, match="step 5 was already completed"):
            call()
    mc.log_batch(6, **good_batch())
    mc.end_epoch("train", 0)
    with pytest.raises(StepAlreadyCompleted, match="step 6"):
        mc.log_pipeline(6, {"cache/size": 1})
    assert mc.completed_step == 6 and mc.last_step == 6


def test_a_batch_of_an_ended_epoch_is_refused(make_client: Make) -> None:
    mc = make_client()
    mc.end_epoch("val", 0)
    with pytest.raises(ValueError, match="epoch: this rank already ended val epoch 0"):
        mc.log_batch(1, **{**good_batch(), "phase": "val"})
    mc.log_batch(1, **{**good_batch(), "phase": "val", "epoch": 1})


SCALAR_MISUSE = [
    ({"values": {"x": math.nan}}, ValueError, ["values['x']", "nan"]),
    ({"values": {}}, ValueError, ["values", "empty"]),
    ({"values": {"a b": 1.0}}, ValueError, ["values", "'a b'"]),
    ({"values": [1.0]}, TypeError, ["values", "list"]),
    ({"values": {"x": "1"}}, TypeError, ["values['x']", "'1'"]),
    ({"higher_is_better": {"y": True}}, ValueError, ["higher_is_better['y']"]),
    ({"higher_is_better": {"x": 1}}, TypeError, ["higher_is_better['x']", "1"]),
]


@pytest.mark.parametrize(("changes", "error", "fragments"), SCALAR_MISUSE)
def test_log_custom_misuse(
    make_client: Make, changes: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    mc = make_client()
    kwargs = {"values": {"x": 1.0}, **changes}
    with pytest.raises(error) as caught:
        mc.log_custom(1, **kwargs)
    assert all(f in str(caught.value) for f in fragments)
    assert mc.stats()["queued"] == 0


def test_a_custom_direction_cannot_change(make_client: Make) -> None:
    mc = make_client()
    mc.log_custom(1, {"x": 1.0}, higher_is_better={"x": True})
    with pytest.raises(
        ValueError, match=r"higher_is_better\['x'\]: declared True before, got False"
    ):
        mc.log_custom(2, {"x": 1.0}, higher_is_better={"x": False})


def test_end_epoch_and_checkpoint_id_misuse(make_client: Make) -> None:
    mc = make_client()
    with pytest.raises(ValueError, match="phase"):
        mc.end_epoch("", 0)
    with pytest.raises(TypeError, match="epoch"):
        mc.end_epoch("val", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_id: invalid name 'a/b'"):
        mc.state_dict(timeout_s=1, checkpoint_id="a/b")


def test_a_closed_client_refuses_records(make_client: Make) -> None:
    mc = make_client()
    mc.close()
    with pytest.raises(ClientClosed) as caught:
        mc.log_lr(1, {"backbone": 0.1})
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ClientClosed):
        mc.end_epoch("val", 0)


CONSTRUCTOR_MISUSE = [
    ({"rank": 2, "world_size": 2}, ValueError, ["rank", "2"]),
    ({"rank": -1}, ValueError, ["rank", "-1"]),
    ({"rank": "0"}, TypeError, ["rank", "'0'"]),
    ({"world_size": 0}, ValueError, ["world_size", "0"]),
    ({"tasks": {}}, ValueError, ["tasks"]),
    ({"tasks": {"genus": 0}}, ValueError, ["num_classes", "0"]),
    ({"tasks": {"genus": 5.0}}, TypeError, ["num_classes", "5.0"]),
    ({"tasks": {"ge nus": 5}}, ValueError, ["name", "'ge nus'"]),
    (
        {"tasks": [{"name": "a", "num_classes": 3}, {"name": "a", "num_classes": 4}]},
        ValueError,
        ["duplicate"],
    ),
    (
        {"tasks": [{"name": "a", "num_classes": 3, "null_index": 3}]},
        ValueError,
        ["null_index", "3"],
    ),
    ({"tasks": [{"name": "a", "num_classes": 3, "nul_index": 1}]}, ValueError, ["nul_index"]),
    ({"tasks": "genus"}, TypeError, ["tasks", "str"]),
    ({"total_steps": 0}, ValueError, ["total_steps", "0"]),
    ({"url": "metrics:8000"}, ValueError, ["url", "'metrics:8000'"]),
    ({"run_id": "exp/42"}, ValueError, ["run_id", "'exp/42'"]),
    ({"config": {"lr": math.nan}}, ValueError, ["config"]),
    ({"config": {"f": object()}}, ValueError, ["config"]),
    ({"subsets": {"null": ["a"]}}, ValueError, ["subsets", "'null'"]),
    ({"subsets": {"rarity": "rare"}}, TypeError, ["subsets['rarity']", "str"]),
    ({"max_queue_items": 0}, ValueError, ["max_queue_items", "0"]),
    ({"flush_interval_s": 0}, ValueError, ["flush_interval_s", "0"]),
    ({"token": 42}, TypeError, ["token", "int"]),
]


@pytest.mark.parametrize(("changes", "error", "fragments"), CONSTRUCTOR_MISUSE)
def test_constructor_misuse(
    service: FakeService, changes: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    kwargs: dict[str, Any] = {
        "url": "http://metrics.test",
        "run_id": "exp",
        "rank": 0,
        "world_size": 1,
        "tasks": TASKS,
        "total_steps": 10,
        "transport": service.transport(),
    }
    with pytest.raises(error) as caught:
        MetricsClient(**{**kwargs, **changes})
    assert isinstance(caught.value, ClientError)
    assert all(f in str(caught.value) for f in fragments), str(caught.value)
