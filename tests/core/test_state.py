"""Accumulator against the reference; merge is exact, associative and commutative."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from client._wire import BatchEvent, TaskInfo
from service.core.exact import fixed, fixed_sum, fixed_sums_by_label, ratio
from service.core.state import Accumulator, Layout, _label_sums_by_bincount, _label_sums_by_mask, _segment_sums
from tests.conftest import TASKS, make_run, to_event
from tests.reference import window_metrics


def _layout() -> Layout:
    return Layout(tuple(TaskInfo(n, c, z) for n, c, z in TASKS), {"rarity": ["common"]})


def _acc(layout: Layout, recs) -> Accumulator:
    acc = Accumulator(layout)
    for rec in recs:
        acc.update(to_event(rec))
    return acc


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compute_equals_reference(seed: int) -> None:
    data = make_run(seed, world_size=2, steps_per_epoch=5, epochs=1)
    got = _acc(_layout(), data.recs).compute()
    want = window_metrics(data.recs, data.tasks)
    assert got == want


def test_all_null_samples_leave_partial_chain_denominator() -> None:
    data = make_run(11, world_size=1, steps_per_epoch=1, epochs=1, batch=(30, 30))
    rec = data.recs[0]
    for name, _, null in TASKS:
        rec.targets[name] = [null] * rec.size
    got = _acc(_layout(), [rec]).compute()
    assert (None, None, "partial_chain_accuracy") not in got
    assert got == window_metrics([rec], data.tasks)


@pytest.mark.parametrize("seed", [5, 6])
def test_merge_is_order_free_and_equals_one_stream(seed: int) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=4, epochs=1)
    layout = _layout()
    whole = _acc(layout, data.recs).to_dict()
    parts = [data.recs[i::3] for i in range(3)]
    for order in itertools.permutations(range(3)):
        merged = Accumulator(layout)
        for i in order:
            merged.merge(_acc(layout, parts[i]))
        assert merged.to_dict() == whole
    # associativity: (a + b) + c == a + (b + c)
    a, b, c = (_acc(layout, p) for p in parts)
    left = a.copy()
    left.merge(b)
    left.merge(c)
    right = b.copy()
    right.merge(c)
    right.merge(a)
    assert left.to_dict() == right.to_dict() == whole


def test_round_trip_is_lossless() -> None:
    data = make_run(9, world_size=2, steps_per_epoch=3, epochs=1)
    acc = _acc(_layout(), data.recs)
    again = Accumulator.from_dict(acc.layout, acc.to_dict())
    assert again.to_dict() == acc.to_dict()
    assert again.compute() == acc.compute()


def test_exact_sums_are_exact() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1e3, 500), rng.normal(0, 1e-300, 10), [5e-324, -0.0, 1e308]])
    expected = sum(fixed(v) for v in values.tolist())
    assert fixed_sum(values) == expected
    labels = rng.integers(0, 4, values.shape[0])
    by_label = fixed_sums_by_label(values, labels, 5)
    pairs = list(zip(values.tolist(), labels.tolist(), strict=True))
    assert by_label == [sum(fixed(v) for v, lab in pairs if lab == k) for k in range(5)]
    assert ratio(fixed(0.1) * 3, 3) == 0.1


def _with_wider_topk(rec, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """The same record with extra top-k columns (k = 5) that never hold the target."""
    for name, classes, _ in TASKS:
        if classes < 5:
            continue
        rows = []
        for y, row in zip(rec.targets[name], rec.topk[name], strict=True):
            spare = [c for c in range(classes) if c != y and c not in row]
            rows.append(row + [int(c) for c in rng.choice(spare, 2, replace=False)])
        rec.topk[name] = rows
    return rec


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_a_delivery_computed_at_once_equals_one_batch_at_a_time_and_the_reference(seed: int) -> None:
    data = make_run(seed, world_size=2, steps_per_epoch=6, epochs=1)
    rng = np.random.default_rng(seed)
    recs = [_with_wider_topk(r, rng) if rng.random() < 0.3 else r for r in data.recs]
    layout = _layout()
    together = Accumulator(layout)
    for delta in Accumulator.of_batches(layout, [to_event(r) for r in recs]):
        together.merge(delta)
    assert together.compute() == window_metrics(recs, data.tasks)
    assert together.to_dict() == _acc(_layout(), recs).to_dict()
    assert any(r.sample_losses is not None for r in recs) and any("mask" not in r.subsets for r in recs)


def test_tasks_with_fewer_than_three_classes_mix_k_within_a_delivery() -> None:
    rng = np.random.default_rng(4)
    layout = Layout((TaskInfo("sex", 2, 0),))
    batches = []
    for k in (2, 3, 2, 3):
        y = rng.integers(0, 2, 40)
        top = rng.integers(0, 2, (40, k))
        batches.append(BatchEvent(step=1, epoch=0, phase="train", time=0.0, targets={"sex": y},
                                  topk={"sex": top}, sizes=[40]))
    together = Accumulator(layout)
    for delta in Accumulator.of_batches(layout, batches):
        together.merge(delta)
    got = together.compute()
    c1 = sum(int((b.topk["sex"][:, 0] == b.targets["sex"]).sum()) for b in batches)
    c3 = sum(sum(int(y in row) for y, row in zip(b.targets["sex"].tolist(), b.topk["sex"].tolist(), strict=True))
             for b in batches)
    assert got[(None, None, "acc1_sex")] == 100 * c1 / 160 and got[(None, None, "acc3_sex")] == 100 * c3 / 160


@pytest.mark.parametrize("seed", range(6))
def test_per_label_sums_by_mask_and_by_bincount_equal_a_plain_loop(seed: int) -> None:
    """The two ways a family's per-label sums are computed (few labels: masks; more: bincount)."""
    rng = np.random.default_rng(seed)
    cols = Layout([TaskInfo("a", 5), TaskInfo("b", 7)], {}).columns
    labels = int(rng.integers(1, 7))
    sizes = rng.integers(1, 40, int(rng.integers(1, 12)))
    samples = int(sizes.sum())
    rows = rng.random((len(cols.family_rows), samples)) < 0.4
    code = rng.integers(0, labels, samples)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    want = np.zeros((len(sizes), labels, cols.f_width), dtype=np.int64)
    for b, (start, size) in enumerate(zip(starts, sizes.tolist(), strict=True)):
        for i in range(start, start + size):
            want[b, code[i], cols.f_n] += 1
            for r in range(rows.shape[0]):
                want[b, code[i], r] += int(rows[r, i])
    assert np.array_equal(_label_sums_by_mask(rows, code, labels, starts, cols), want)
    assert np.array_equal(_label_sums_by_bincount(rows, code, labels, sizes, cols), want)


@pytest.mark.parametrize("seed", range(4))
def test_segment_sums_count_set_flags_per_segment_past_every_small_integer_type(seed: int) -> None:
    """Flags summed as bytes in int32 equal a plain count, with segments longer than 255 and 65,535 flags
    (a narrow accumulator would wrap) and segments of one."""
    rng = np.random.default_rng(seed)
    sizes = [1, 300, 70_000, *rng.integers(1, 600, 5).tolist()]
    rng.shuffle(sizes)
    flags = rng.random((3, sum(sizes))) < 0.97
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    got = _segment_sums(flags, starts)
    for row in range(flags.shape[0]):
        for segment, (start, size) in enumerate(zip(starts.tolist(), sizes, strict=True)):
            assert got[row, segment] == sum(1 for i in range(start, start + size) if flags[row, i])
