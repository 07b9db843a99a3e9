"""The rules module itself: names matched in full everywhere, the step-completion rule."""

from __future__ import annotations

import numpy as np
import pytest

from client._errors import InvalidRecord, InvalidType, InvalidValue
from client._rules import RankSteps, check_name, check_plain_json, check_run_id, check_scalar_name, completed_after
from client._wire import WireError, decode_event
from tests.client.client_fakes import FakeService


@pytest.mark.parametrize("bad", ["a\n", "a\r", "a\x00", "a b", "", "é"])
def test_names_are_matched_in_full(bad: str) -> None:
    with pytest.raises(InvalidValue):
        check_name(bad, "phase")
    with pytest.raises(InvalidValue):
        check_scalar_name(bad, "values")
    with pytest.raises(WireError):  # the service's decoder uses the same pattern
        decode_event({"kind": "end_epoch", "phase": bad, "epoch": 0, "time": 1.0})


def test_name_lengths() -> None:
    assert check_name("a" * 128, "task") and check_scalar_name("a" * 200, "values")
    with pytest.raises(InvalidValue):
        check_name("a" * 129, "task")
    with pytest.raises(InvalidValue):
        check_scalar_name("a" * 201, "values")


def test_run_ids_are_matched_in_full() -> None:
    for bad in ("exp\n", "exp/1", ".", ".."):
        with pytest.raises(InvalidValue):
            check_run_id(bad)
    with pytest.raises(InvalidType):
        check_run_id(42)


def test_a_label_with_a_trailing_newline_is_refused_at_log_time(make_client, service: FakeService) -> None:  # type: ignore[no-untyped-def]
    mc = make_client()
    batch = {"targets": {"genus": [0], "species": [1]}, "topk": {"genus": [[0, 1, 2]], "species": [[1, 2, 3]]}}
    with pytest.raises(InvalidRecord, match="rare"):
        mc.log_batch(1, epoch=0, subsets={"rarity": np.array(["rare\n"])}, **batch)
    with pytest.raises(InvalidRecord):
        mc.log_batch(1, epoch=0, phase="val\n", **batch)


def test_config_values_are_plain_json() -> None:
    check_plain_json({"a": [1, 2.5, None, True, "x", {"b": -(2**63)}]}, "config")
    with pytest.raises(InvalidType, match=r"config\.a\[0\]"):
        check_plain_json({"a": [object()]}, "config")
    with pytest.raises(InvalidType, match="keys must be str"):
        check_plain_json({1: 2}, "config")


@pytest.mark.parametrize(("record", "expected"), [
    ({"train_step": 5}, RankSteps(5, 4)),
    ({"train_step": 2}, RankSteps(3, 1)),  # an earlier step completes nothing new
    ({"end_train_epoch": True}, RankSteps(3, 3)),
    ({"end_train_epoch": False}, RankSteps(3, 1)),
    ({"through_step": 7}, RankSteps(3, 7)),
])
def test_the_step_completion_rule(record: dict[str, object], expected: RankSteps) -> None:
    assert completed_after(RankSteps(last_step=3, completed=1), **record) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["topk", "logits"])  # the fast path and the thorough one
def test_a_rank_past_the_label_limits_is_refused_at_the_call(make_client, path: str) -> None:  # type: ignore[no-untyped-def]
    mc = make_client()

    def log(family: str, labels: list[str]) -> None:
        size = len(labels)
        preds = ({"topk": {"genus": np.tile([0, 1, 2], (size, 1)), "species": np.tile([1, 2, 3], (size, 1))}}
                 if path == "topk" else {"logits": {"genus": np.zeros((size, 5)), "species": np.zeros((size, 10))}})
        mc.log_batch(1, epoch=0, phase="val", targets={"genus": np.zeros(size, int), "species": np.zeros(size, int)},
                     subsets={family: np.array(labels)}, **preds)

    log("rarity", [f"l{i}" for i in range(4_000)])
    log("rarity", [f"m{i}" for i in range(96)])  # 4,096: the limit
    with pytest.raises(InvalidRecord, match="4097 labels, more than the limit of 4096"):
        log("rarity", ["one-more"])
    for i in range(63):
        log(f"f{i}", ["x"])  # 64 families
    with pytest.raises(InvalidRecord, match="65 families"):
        log("f63", ["x"])
    log("rarity", ["l0", "m5"])  # known labels stay fine
