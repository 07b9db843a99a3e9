"""numpy str label arrays coded at once: every sample keeps its label, and the wire is the per-label one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from client._fastpath import FastBatches, PackedBatch, _dictionary, unpacked
from client._labels import LabelCoder, Vocabulary, compact
from client._wire import BatchEvent, TaskInfo, decode_event, encode_event

TASKS = [TaskInfo("a", 5)]
ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:+=@-")


def random_names(rng: np.random.Generator, count: int, longest: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(ALPHABET, int(rng.integers(1, longest + 1)))))
    return sorted(names)


def build(fast: FastBatches, subsets: dict[str, Any]) -> PackedBatch | None:
    size = len(next(iter(subsets.values())))
    targets, topk = {"a": np.zeros(size, dtype=np.int64)}, {"a": np.zeros((size, 3), dtype=np.int64)}
    return fast.build(1, 0, "train", 0.0, None, None, targets, topk, subsets)


def labels_of(record: PackedBatch) -> dict[str, list[str]]:
    event = unpacked(record)
    assert isinstance(event, BatchEvent)
    return {f: [vocabulary[c] for c in codes.tolist()] for f, (vocabulary, codes) in event.subsets.items()}


def wire_labels(record: PackedBatch) -> dict[str, list[str]]:
    """What the service decodes from the record's binary body."""
    decoded = decode_event(record.encode())
    assert isinstance(decoded, BatchEvent)
    return {f: [vocabulary[c] for c in codes.tolist()] for f, (vocabulary, codes) in decoded.subsets.items()}


@pytest.mark.parametrize("seed", range(8))
def test_random_vocabularies_keep_every_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fast = FastBatches(TASKS)
    names = random_names(rng, int(rng.integers(1, 40)), longest=int(rng.integers(1, 12)))
    for _ in range(6):  # new labels appear over time; widths vary between batches
        names += random_names(rng, int(rng.integers(0, 3)), longest=14)
        size = int(rng.integers(1, 300))
        array = rng.choice(np.array(names), size).astype(f"U{int(rng.integers(14, 20))}")
        record = build(fast, {"fam": array})
        assert record is not None
        assert labels_of(record) == wire_labels(record) == {"fam": array.tolist()}
        assert encode_event(unpacked(record), False)["subsets"] == {"fam": array.tolist()}  # JSON too


def test_the_coded_form_encodes_exactly_like_label_lists() -> None:
    rng = np.random.default_rng(3)
    lists = {"rarity": rng.choice(["common", "rare", "very_rare"], 256).tolist(), "mask": ["m", "u"] * 128}
    from_lists = build(FastBatches(TASKS), lists)
    fast = FastBatches(TASKS)
    build(fast, {f: np.array([*v, "unused"]) for f, v in lists.items()})  # known labels this batch does not use
    from_arrays = build(fast, {f: np.array(v) for f, v in lists.items()})
    assert from_lists is not None and from_arrays is not None
    assert type(from_arrays.subsets["rarity"][0]) is Vocabulary
    assert from_arrays.encode() == from_lists.encode()
    assert encode_event(unpacked(from_arrays), True) == encode_event(unpacked(from_lists), True)


def test_an_unknown_label_with_a_known_first_character_is_learned_not_miscoded() -> None:
    fast = FastBatches(TASKS)
    assert build(fast, {"f": np.array(["common", "rare"])}) is not None
    record = build(fast, {"f": np.array(["cat", "rare", "common", "raw"])})  # same first letters as known ones
    assert record is not None and labels_of(record) == {"f": ["cat", "rare", "common", "raw"]}


def test_labels_no_two_positions_tell_apart_still_arrive() -> None:
    names = ["".join(bits) for bits in np.array(np.meshgrid(*[["a", "b"]] * 3)).reshape(3, -1).T.tolist()]
    coder = LabelCoder(names)
    assert not coder.has_table(np.array(names))  # any two positions give 4 combinations for 8 labels
    fast = FastBatches(TASKS)
    array = np.random.default_rng(4).choice(np.array(names), 50)
    record = build(fast, {"f": array})
    assert record is not None and labels_of(record) == {"f": array.tolist()}


@pytest.mark.parametrize("make", [
    lambda a: a[::2],                          # not contiguous
    lambda a: a.astype(">U12"),                # big-endian
    lambda a: a.astype("U40"),                 # wider than any label
])
def test_unusual_array_layouts_code_the_same(make) -> None:  # type: ignore[no-untyped-def]
    base = np.random.default_rng(5).choice(np.array(["x1", "y22", "z333"]), 64)
    fast = FastBatches(TASKS)
    array = make(base)
    record = build(fast, {"f": array})
    assert record is not None and labels_of(record) == {"f": array.tolist()}


@pytest.mark.parametrize("bad", [
    np.array(["ok", "not ok"]),                # a space: not a valid name
    np.array(["ok", ""]),                      # empty
    np.array(["ok", "é"]),                     # not ASCII
    np.array([["ok"], ["ok"]]),                # 2-d
    np.array([1, 2]),                          # not str
])
def test_invalid_label_arrays_go_to_the_thorough_path(bad: np.ndarray) -> None:
    fast = FastBatches(TASKS)
    assert build(fast, {"f": np.array(["ok", "ok"])}) is not None
    assert build(fast, {"f": bad}) is None


def test_an_invalid_label_is_refused_even_when_it_looks_up_a_known_code() -> None:
    fast = FastBatches(TASKS)
    assert build(fast, {"f": np.array(["ab", "cd"])}) is not None
    assert build(fast, {"f": np.array(["a b", "cd"])}) is None  # 'a' finds "ab"; the exact check refuses it


@pytest.mark.parametrize("seed", range(4))
def test_compact_equals_dictionary_encoding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocabulary = Vocabulary(random_names(rng, int(rng.integers(1, 600)), 6))
    codes = rng.integers(0, len(vocabulary), int(rng.integers(1, 400))).astype(np.uint16)
    labels: Sequence[str] = [vocabulary[c] for c in codes.tolist()]
    got, want = compact(vocabulary, codes), _dictionary(labels)
    assert got[0] == want[0] and got[1].dtype == want[1].dtype and got[1].tolist() == want[1].tolist()
