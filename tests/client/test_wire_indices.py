"""Class indices travel in the narrowest type that holds the task's classes, and decode to the same values."""

from __future__ import annotations

import numpy as np
import pytest

from client._wire import MSGPACK_TYPE, BatchEvent, decode_event, encode_event, index_type, pack_body, unpack_body


@pytest.mark.parametrize(("classes", "wire"), [(2, "|u1"), (256, "|u1"), (257, "<u2"), (65_536, "<u2"),
                                               (65_537, "<i4"), (2**31 - 1, "<i4")])
def test_the_largest_index_of_a_task_survives_its_wire_type(classes: int, wire: str) -> None:
    assert index_type(classes).str == wire
    rng = np.random.default_rng(classes % 1000)
    targets = np.concatenate([[0, classes - 1], rng.integers(0, classes, 30)])
    topk = np.stack([targets, np.full(32, classes - 1), np.zeros(32, dtype=np.int64)], axis=1)
    event = BatchEvent(step=1, epoch=0, phase="train", time=0.0, targets={"t": targets}, topk={"t": topk}, sizes=[32])
    body = pack_body({"events": [encode_event(event, True, {"t": index_type(classes)})]}, True)
    raw = unpack_body(body, MSGPACK_TYPE)["events"][0]
    assert raw["targets"]["t"]["dtype"] == raw["topk"]["t"]["dtype"] == wire
    decoded = decode_event(raw)
    assert isinstance(decoded, BatchEvent)
    assert decoded.targets["t"].tolist() == targets.tolist() and decoded.topk["t"].tolist() == topk.tolist()


def test_without_index_types_binary_bodies_carry_int32_and_json_plain_lists() -> None:
    event = BatchEvent(step=1, epoch=0, phase="train", time=0.0, targets={"t": np.array([7])},
                       topk={"t": np.array([[7, 1, 2]])}, sizes=[1])
    assert encode_event(event, True)["targets"]["t"]["dtype"] == "<i4"
    assert encode_event(event, False, {"t": index_type(10)})["topk"]["t"] == [[7, 1, 2]]
