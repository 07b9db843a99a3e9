"""The fast path builds exactly the record the thorough path builds, and declines everything else."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from client._fastpath import FastBatches, unpacked
from client._records import build_batch
from client._wire import BatchEvent, TaskInfo, encode_event, index_type

TASKS = [TaskInfo("a", 5), TaskInfo("b", 2000, 3), TaskInfo("c", 2)]
WIRE_TYPES = {t.name: index_type(t.num_classes) for t in TASKS}  # as the sender encodes


def _inputs(rng: np.random.Generator, size: int) -> dict:
    return {
        "targets": {t.name: rng.integers(0, t.num_classes, size) for t in TASKS},
        "topk": {t.name: rng.integers(0, t.num_classes, (size, min(3, t.num_classes))) for t in TASKS},
        "subsets": {"rarity": rng.choice(["common", "rare"], size).tolist(), "mask": ["m"] * size},
        "loss": float(rng.random()), "task_losses": {"a": 0.25, "c": np.float32(0.5)},
    }


def _slow(args: dict) -> dict:
    event = build_batch(TASKS, step=3, epoch=1, phase="train", time=7.0, logits=None, sample_losses=None, **args)
    return encode_event(event, True, WIRE_TYPES)


@pytest.mark.parametrize("seed", range(5))
def test_fast_equals_thorough(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fast = FastBatches(TASKS)
    args = _inputs(rng, int(rng.integers(1, 300)))
    event = fast.build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"], args["topk"],
                       args["subsets"])
    assert event is not None
    assert encode_event(unpacked(event), True, WIRE_TYPES) == _slow(args)
    slow = build_batch(TASKS, step=3, epoch=1, phase="train", time=7.0, logits=None, sample_losses=None, **args)
    assert encode_event(unpacked(event), False) == encode_event(slow, False)  # JSON: the same lists


def test_fast_path_copies_the_callers_buffers() -> None:
    rng = np.random.default_rng(1)
    args = _inputs(rng, 8)
    packed = FastBatches(TASKS).build(1, 0, "train", 0.0, None, None, args["targets"], args["topk"], None)
    assert packed is not None
    event = packed.unpack()
    before = event.targets["a"].copy(), event.topk["b"].copy()
    args["targets"]["a"][:] = args["targets"]["a"] + 1
    args["topk"]["b"][:] = args["topk"]["b"] + 1
    assert np.array_equal(event.targets["a"], before[0]) and np.array_equal(event.topk["b"], before[1])


ARRAY_FORMS = {  # the int64 arrays of a batch in other forms the fast path takes (and must copy by value)
    "int32": lambda a: a.astype(np.int32),
    "big-endian int64": lambda a: a.astype(">i8"),
    "not C-contiguous": lambda a: np.asfortranarray(a) if a.ndim == 2 else np.repeat(a, 2)[::2],
}


@pytest.mark.parametrize("form", ARRAY_FORMS)
def test_arrays_in_any_integer_form_give_the_thorough_record(form: str) -> None:
    """Native C-contiguous int64 arrays are copied as raw bytes; any other form must not be (its bytes are
    not int64 values in this order): the record equals the thorough path's, and a bad index is still refused."""
    args = _inputs(np.random.default_rng(7), 50)
    for group in ("targets", "topk"):
        args[group] = {task: ARRAY_FORMS[form](array) for task, array in args[group].items()}
    fast = FastBatches(TASKS)
    event = fast.build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"], args["topk"],
                       args["subsets"])
    assert event is not None
    assert encode_event(unpacked(event), True, WIRE_TYPES) == _slow(args)
    bad = {**args["targets"], "b": ARRAY_FORMS[form](np.full(50, 2000))}  # task b has 2,000 classes
    assert fast.build(3, 1, "train", 7.0, None, None, bad, args["topk"], None) is None


@pytest.mark.parametrize("damage", [
    lambda a: a["targets"].update(a=np.array([5, 0, 0, 0])),          # class index == num_classes
    lambda a: a["topk"].update(b=-a["topk"]["b"] - 1),                 # negative index
    lambda a: a["targets"].update(a=a["targets"]["a"].astype(float)),  # float indices
    lambda a: a["targets"].pop("c"),                                   # missing task
    lambda a: a["topk"].update(x=a["topk"]["a"]),                      # unknown task
    lambda a: a["topk"].update(a=a["topk"]["a"][:, :2]),               # k < 3
    lambda a: a["topk"].update(a=a["topk"]["a"][:3]),                  # mismatched lengths
    lambda a: a.update(loss=float("nan")),
    lambda a: a.update(task_losses={"zz": 1.0}),
    lambda a: a["subsets"].update(rarity=["bad label"] * 4),
    lambda a: a["subsets"].update(null=["x"] * 4),
    lambda a: a["subsets"].update(rarity=["a"] * 3),
    lambda a: a["targets"].update(a=a["targets"]["a"].tolist()),      # lists: the thorough path decides
])
def test_anything_unusual_is_left_to_the_thorough_path(damage) -> None:  # type: ignore[no-untyped-def]
    args = _inputs(np.random.default_rng(2), 4)
    damage(args)
    assert FastBatches(TASKS).build(1, 0, "train", 0.0, args["loss"], args["task_losses"], args["targets"],
                                    args["topk"], args["subsets"]) is None


@pytest.mark.parametrize("where", [(kind, t.name) for kind in ("targets", "topk") for t in TASKS])
def test_each_array_is_range_checked_against_its_own_task(where: tuple[str, str]) -> None:
    """One index out of range in any one array (first or last element, or anywhere) is declined; the
    largest valid index in every array is accepted (the check must not shift from one array to the next)."""
    kind, name = where
    limits = {t.name: t.num_classes for t in TASKS}
    rng = np.random.default_rng(sum(map(ord, kind + name)))
    fast = FastBatches(TASKS)
    for bad in (limits[name], -1, limits[name] + 10**6, -(2**62)):
        for position in ("first", "last", "random"):
            args = _inputs(rng, 7)
            array = args[kind][name].reshape(-1)
            at = {"first": 0, "last": array.size - 1, "random": int(rng.integers(array.size))}[position]
            array[at] = bad
            assert fast.build(1, 0, "train", 0.0, None, None, args["targets"], args["topk"], None) is None, \
                (bad, position)
    args = _inputs(rng, 7)
    for group in (args["targets"], args["topk"]):
        for task, array in group.items():
            array.reshape(-1)[int(rng.integers(array.size))] = limits[task] - 1
    packed = fast.build(1, 0, "train", 0.0, None, None, args["targets"], args["topk"], None)
    assert packed is not None
    event = packed.unpack()
    for task in limits:
        assert np.array_equal(event.targets[task], args["targets"][task])
        assert np.array_equal(event.topk[task], args["topk"][task])


def test_numpy_label_arrays_take_the_fast_path_and_equal_the_thorough_one() -> None:
    rng = np.random.default_rng(9)
    args = _inputs(rng, 40)
    args["subsets"] = {f: np.array(v) for f, v in args["subsets"].items()}
    event = FastBatches(TASKS).build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"],
                                     args["topk"], args["subsets"])
    assert event is not None
    assert encode_event(unpacked(event), True, WIRE_TYPES) == _slow(args)


def test_a_packed_record_merges_with_a_thorough_one_of_the_same_step() -> None:
    from client._coalesce import coalesce_key, merge, record_nbytes, record_samples

    rng = np.random.default_rng(12)
    first, second = _inputs(rng, 7), _inputs(rng, 5)
    packed = FastBatches(TASKS).build(3, 1, "train", 7.0, first["loss"], first["task_losses"], first["targets"],
                                      first["topk"], first["subsets"])
    assert packed is not None
    slow = build_batch(TASKS, step=3, epoch=1, phase="train", time=8.0, logits=None, sample_losses=None, **second)
    assert coalesce_key(packed, 2) == coalesce_key(slow, 2) is not None
    assert record_samples(packed) == 7 and record_nbytes(packed) >= packed.flat.nbytes
    merged = merge([packed, slow])
    assert isinstance(merged, BatchEvent) and merged.sizes == [7, 5] and merged.time == 8.0
    for task in ("a", "b", "c"):
        assert merged.targets[task].tolist() == [*first["targets"][task].tolist(), *second["targets"][task].tolist()]
    vocabulary, codes = merged.subsets["rarity"]
    assert [vocabulary[c] for c in codes.tolist()] == first["subsets"]["rarity"] + second["subsets"]["rarity"]


def test_merge_keys_agree_exactly_when_the_batches_could_merge() -> None:
    """Packed batches are keyed by a shape number looked up on their layout; two records of one step share a key
    exactly when ``block_key`` of their unpacked events (what a merge needs) is the same, packed or not."""
    from client._coalesce import coalesce_key
    from client._wire import block_key

    rng = np.random.default_rng(21)
    fast, records = FastBatches(TASKS), []
    for variant in range(24):
        args = _inputs(rng, 16)  # one batch size: records share layouts, so their shape numbers come from its table
        if variant % 2:
            args["loss"] = None
        if variant % 3 == 1:
            args["task_losses"] = {"c": 0.5, "a": 0.25}  # the same names in another order: still mergeable
        elif variant % 3 == 2:
            args["task_losses"] = {"b": 0.5}
        if variant % 4 >= 2:
            del args["subsets"]["mask"]
        if variant % 5 == 0:  # a wider top-k for one task: another layout
            args["topk"]["a"] = rng.integers(0, 5, (len(args["targets"]["a"]), 4))
        packed = fast.build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"], args["topk"],
                            args["subsets"])
        assert packed is not None
        thorough = build_batch(TASKS, step=3, epoch=1, phase="train", time=7.0, logits=None, sample_losses=None,
                               **args)
        records += [packed, thorough]
    shapes = [block_key(unpacked(r)) for r in records]
    keys = [coalesce_key(r, 0) for r in records]
    assert len(set(shapes)) > 6  # the variants give several shapes
    for i in range(len(records)):
        for j in range(len(records)):
            assert (keys[i] == keys[j]) == (shapes[i] == shapes[j]), (i, j)
    assert coalesce_key(records[0], 1) != keys[0]  # a control record between them keeps them apart


def _samples(event: BatchEvent) -> dict:
    """What the service takes from a batch: values per sample, whatever the wire types."""
    return {"targets": {t: a.tolist() for t, a in event.targets.items()},
            "topk": {t: a.tolist() for t, a in event.topk.items()},
            "sizes": event.sizes, "losses": event.losses, "task_losses": event.task_losses,
            "subsets": {f: [vocabulary[c] for c in codes.tolist()] for f, (vocabulary, codes) in event.subsets.items()}}


@pytest.mark.parametrize("seed", range(4))
def test_a_packed_batch_encoded_from_its_buffer_decodes_like_the_thorough_one(seed: int) -> None:
    from client._wire import MSGPACK_TYPE, decode_event, pack_body, unpack_body

    rng = np.random.default_rng(40 + seed)
    args = _inputs(rng, int(rng.integers(1, 300)))
    packed = FastBatches(TASKS).build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"],
                                      args["topk"], args["subsets"])
    assert packed is not None
    wire = unpack_body(pack_body({"events": [packed.encode()]}, True), MSGPACK_TYPE)["events"][0]
    assert wire["targets"]["b"]["dtype"] == "<u2"  # the run's widest task has 2,000 classes
    got, want = decode_event(wire), decode_event(_slow(args))
    assert isinstance(got, BatchEvent) and isinstance(want, BatchEvent)
    assert _samples(got) == _samples(want) and (got.step, got.epoch, got.phase, got.time) == (3, 1, "train", 7.0)


def _tracked_objects_of(record: object) -> set[int]:
    """Ids of the objects reachable from ``record`` that the garbage collector tracks."""
    seen: set[int] = set()
    tracked: set[int] = set()
    stack = [record]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if gc.is_tracked(obj):
            tracked.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return tracked


@pytest.mark.parametrize("labels", ["lists", "numpy str"])
def test_a_queued_record_holds_few_objects_for_the_garbage_collector(labels: str) -> None:
    """Every object a waiting record keeps that the collector tracks brings the next collection on the
    training thread closer (at 10 a record, a collection every ~70 calls: log_batch's p99 was one)."""
    rng = np.random.default_rng(3)
    fast = FastBatches(TASKS)
    args = _inputs(rng, 64)
    args["task_losses"] = {"a": 0.25, "b": 0.5, "c": 0.75}
    if labels == "numpy str":
        args["subsets"] = {family: np.array(values) for family, values in args["subsets"].items()}
    records = [fast.build(3, 1, "train", 7.0, args["loss"], args["task_losses"], args["targets"], args["topk"],
                          args["subsets"]) for _ in range(2)]
    assert records[0] is not None and records[1] is not None
    gc.collect()  # tuples of untracked objects are untracked by a collection
    own = _tracked_objects_of(records[1]) - _tracked_objects_of(records[0])  # not shared (layouts, vocabularies)
    # the record, its subsets dict and one (labels, codes) pair a family; losses are plain floats
    assert len(own) <= 2 + len(args["subsets"])


def test_non_finite_task_losses_leave_the_fast_path_and_raise_naming_the_task() -> None:
    rng = np.random.default_rng(4)
    args = _inputs(rng, 8)
    fast = FastBatches(TASKS)
    for bad in (float("nan"), float("inf")):
        losses = {"a": 0.25, "c": bad}
        assert fast.build(1, 0, "train", 0.0, None, losses, args["targets"], args["topk"], None) is None
        with pytest.raises(ValueError, match="task_losses"):
            build_batch(TASKS, step=1, epoch=0, phase="train", time=0.0, loss=None, task_losses=losses,
                        targets=args["targets"], topk=args["topk"], logits=None, subsets=None, sample_losses=None)
