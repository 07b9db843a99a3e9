"""The common case of ``log_batch``, checked with as little work on the training thread as possible.

numpy integer arrays for every task, str label lists: one concatenation copies every
array (callers reuse their buffers) and one comparison against cached bounds checks every
class index at once; labels are only checked against the names already seen, and their
dictionary encoding is left to the sender thread (``encode_labels``). Anything unusual
returns ``None`` and the caller takes the thorough path, whose errors name the argument
and the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from client._wire import MAX_TOPK, MIN_TOPK, NAME_PATTERN, RESERVED_FAMILY, BatchEvent, Event, TaskInfo

#: Marks labels not dictionary-encoded yet: ``subsets[family] == (labels per sample, RAW_CODES)``.
RAW_CODES = np.empty(0, dtype=np.int64)
TaskArrays = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (targets, topk) by task


class FastBatches:
    """Builds batch records for one client's tasks; caches bounds and the labels seen."""

    def __init__(self, tasks: Sequence[TaskInfo]) -> None:
        self.names = [t.name for t in tasks]
        self.name_set = frozenset(self.names)
        self.limits = [t.num_classes for t in tasks]
        self.min_k = [min(MIN_TOPK, t.num_classes) for t in tasks]
        self._bounds: dict[tuple[int, ...], np.ndarray] = {}
        self._labels: dict[str, set[str]] = {}

    def build(self, step: int, epoch: int, phase: str, time: float, loss: Any, task_losses: Any,
              targets: Any, topk: Any, subsets: Any) -> BatchEvent | None:
        """The record, or None when the thorough path must decide."""
        arrays = self._arrays(targets, topk)
        if arrays is None:
            return None
        size, checked = arrays
        losses = _numbers([loss]) if loss is not None else None
        per_task = self._task_losses(task_losses)
        labels = self._subsets(subsets, size)
        if (loss is not None and losses is None) or per_task is None or labels is None:
            return None
        got_targets, got_topk = checked
        return BatchEvent(step=step, epoch=epoch, phase=phase, time=time, targets=got_targets, topk=got_topk,
                          sizes=[size], losses=losses, task_losses=per_task, subsets=labels)

    def _arrays(self, targets: Any, topk: Any) -> tuple[int, TaskArrays] | None:
        if type(targets) is not dict or type(topk) is not dict:
            return None
        if targets.keys() != self.name_set or topk.keys() != self.name_set:
            return None
        ys = [targets[n] for n in self.names]
        ps = [topk[n] for n in self.names]
        if not all(type(a) is np.ndarray and a.dtype.kind in "iu" for a in (*ys, *ps)):
            return None
        size = ys[0].shape[0] if ys[0].ndim == 1 else 0
        for y, p, min_k in zip(ys, ps, self.min_k, strict=True):
            if y.shape != (size,) or p.ndim != 2 or p.shape[0] != size or not min_k <= p.shape[1] <= MAX_TOPK:
                return None
        if size == 0:
            return None
        ks = tuple(p.shape[1] for p in ps)
        flat = np.concatenate([*ys, *(p.reshape(-1) for p in ps)], dtype=np.int64, casting="same_kind")
        if (flat.view(np.uint64) >= self._bound(size, ks)).any():  # negatives wrap to huge values
            return None
        return size, self._split(flat, size, ks)

    def _bound(self, size: int, ks: tuple[int, ...]) -> np.ndarray:
        key = (size, *ks)
        bound = self._bounds.get(key)
        if bound is None:
            counts = [size] * len(ks) + [size * k for k in ks]
            bound = self._bounds[key] = np.repeat(np.array(self.limits * 2, dtype=np.uint64), counts)
        return bound

    def _split(self, flat: np.ndarray, size: int, ks: tuple[int, ...]) -> TaskArrays:
        targets, topk, at = {}, {}, 0
        for name in self.names:
            targets[name] = flat[at:at + size]
            at += size
        for name, k in zip(self.names, ks, strict=True):
            topk[name] = flat[at:at + size * k].reshape(size, k)
            at += size * k
        return targets, topk

    def _task_losses(self, task_losses: Any) -> dict[str, list[float]] | None:
        if task_losses is None:
            return {}
        if type(task_losses) is not dict or not task_losses.keys() <= self.name_set:
            return None
        out = {}
        for name, value in task_losses.items():
            numbers = _numbers([value])
            if numbers is None:
                return None
            out[name] = numbers
        return out

    def _subsets(self, subsets: Any, size: int) -> dict[str, tuple[list[str], np.ndarray]] | None:
        if subsets is None:
            return {}
        if type(subsets) is not dict:
            return None
        out = {}
        for family, labels in subsets.items():
            if type(labels) is np.ndarray and labels.dtype.kind == "U" and labels.ndim == 1:
                labels = labels.tolist()  # numpy str arrays: str objects once, then as a list
            if type(labels) is not list or len(labels) != size or not self._known(family, labels):
                return None
            out[family] = (list(labels), RAW_CODES)
        return out

    def _known(self, family: Any, labels: list[Any]) -> bool:
        seen = self._labels.get(family)
        if seen is None:
            if type(family) is not str or family == RESERVED_FAMILY or not NAME_PATTERN.match(family):
                return False
            seen = self._labels[family] = set()
        try:
            if seen.issuperset(labels):  # the steady state: no new label, no new set built
                return True
            new = set(labels) - seen
        except TypeError:  # unhashable labels
            return False
        if new and not all(type(v) is str and NAME_PATTERN.match(v) for v in new):
            return False
        seen |= new
        return True


def _numbers(values: list[Any]) -> list[float] | None:
    out = []
    for value in values:
        if type(value) is float or type(value) is int or isinstance(value, np.floating):
            number = float(value)
        else:
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out


def encode_labels(event: Event) -> Event:
    """Dictionary-encode labels left raw by the fast path (on the sender thread)."""
    if isinstance(event, BatchEvent):
        for family, (labels, codes) in event.subsets.items():
            if codes is RAW_CODES:
                vocabulary = sorted(set(labels))
                index = {label: i for i, label in enumerate(vocabulary)}
                if len(vocabulary) <= 256:  # one byte a sample (the usual case: a few labels)
                    encoded = np.frombuffer(bytes(map(index.__getitem__, labels)), dtype=np.uint8)
                else:
                    encoded = np.fromiter(map(index.__getitem__, labels), dtype=np.int32, count=len(labels))
                event.subsets[family] = (vocabulary, encoded)
    return event


def raw_label_bytes(labels: Mapping[str, tuple[list[str], np.ndarray]]) -> int:
    """Encoded size estimate of raw labels (one int per sample)."""
    return sum(4 * len(v) for v, codes in labels.values() if codes is RAW_CODES)
