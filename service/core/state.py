"""Sufficient statistics of one window: counts, exact sums, time span; ratios only in compute().

``Accumulator.update`` takes one batch (vectorised, no per-sample Python). ``merge`` adds
another accumulator; it is associative and commutative exactly (integer counts and
fixed-point sums, min/max times), so a window equals one stream over all its batches in
any order.

>>> from client._wire import TaskInfo
>>> layout = Layout((TaskInfo("genus", 5), TaskInfo("species", 9)))
>>> acc = Accumulator(layout)
>>> acc.n
0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client._wire import RESERVED_FAMILY, BatchEvent, TaskInfo
from service.core.exact import fixed, fixed_sums_by_label, ratio

NULL_FAMILY = RESERVED_FAMILY

MetricId = tuple[str | None, str | None, str]  # (family, label, suffix); family None = global
Metrics = dict[MetricId, float]


class Layout:
    """A run's tasks and its subset label vocabularies (append-only, shared by its windows)."""

    def __init__(self, tasks: tuple[TaskInfo, ...], families: Mapping[str, list[str]] | None = None) -> None:
        self.tasks = tasks
        self.null_index = np.array([t.null_index for t in tasks], dtype=np.int64)
        self.families: dict[str, list[str]] = {f: list(v) for f, v in (families or {}).items()}
        self._index = {f: {label: i for i, label in enumerate(v)} for f, v in self.families.items()}

    def codes(self, family: str, labels: list[str], local_codes: np.ndarray) -> np.ndarray:
        """Map a batch's dictionary-encoded labels to the run's codes, adding new labels."""
        index = self._index.setdefault(family, {})
        vocab = self.families.setdefault(family, [])
        for label in labels:
            if label not in index:
                index[label] = len(vocab)
                vocab.append(label)
        table = np.array([index[label] for label in labels], dtype=np.int64)
        codes: np.ndarray = table[local_codes]
        return codes

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe vocabularies."""
        return {f: list(v) for f, v in self.families.items()}


@dataclass(frozen=True)
class Hits:
    """Per-sample outcomes of one batch (rows: tasks in run order; columns: samples)."""

    top1: np.ndarray
    top3: np.ndarray
    nonnull: np.ndarray
    chain: np.ndarray
    partial: np.ndarray
    any_nonnull: np.ndarray

    @classmethod
    def of(cls, batch: BatchEvent, layout: Layout) -> Hits:
        """Compare every task's top-k with its target, vectorised per task."""
        names = [t.name for t in layout.tasks]
        y = np.stack([batch.targets[t] for t in names])
        top = [batch.topk[t] for t in names]
        top1 = np.stack([top[i][:, 0] == y[i] for i in range(len(names))])
        top3 = np.stack([(top[i][:, :3] == y[i][:, None]).any(axis=1) for i in range(len(names))])
        nonnull = y != layout.null_index[:, None]
        any_nonnull = np.asarray(nonnull.any(axis=0))
        partial = np.asarray((top1 | ~nonnull).all(axis=0) & any_nonnull)
        return cls(top1, top3, nonnull, np.asarray(top1.all(axis=0)), partial, any_nonnull)


@dataclass
class FamilyStats:
    """Per-label statistics of one subset family (arrays indexed by run label code)."""

    n: np.ndarray
    c1: np.ndarray
    c3: np.ndarray
    chain: np.ndarray
    pchain: np.ndarray
    pchain_n: np.ndarray
    loss_n: np.ndarray
    loss_fx: list[int]

    @classmethod
    def empty(cls, labels: int, tasks: int) -> FamilyStats:
        """Zeros for ``labels`` labels."""
        z = np.zeros(labels, dtype=np.int64)
        return cls(z, np.zeros((labels, tasks), np.int64), np.zeros((labels, tasks), np.int64),
                   z.copy(), z.copy(), z.copy(), z.copy(), [0] * labels)

    def grow(self, labels: int) -> None:
        """Pad to ``labels`` labels."""
        extra = labels - self.n.shape[0]
        if extra <= 0:
            return
        for name in ("n", "chain", "pchain", "pchain_n", "loss_n"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, np.int64)]))
        for name in ("c1", "c3"):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros((extra, array.shape[1]), np.int64)]))
        self.loss_fx = self.loss_fx + [0] * extra

    def merge(self, other: FamilyStats) -> None:
        """Add ``other`` in place (``other`` may know fewer labels, never more after growing)."""
        self.grow(other.n.shape[0])
        size = other.n.shape[0]  # labels are append-only: other's codes are a prefix of ours
        self.n[:size] += other.n
        self.c1[:size] += other.c1
        self.c3[:size] += other.c3
        self.chain[:size] += other.chain
        self.pchain[:size] += other.pchain
        self.pchain_n[:size] += other.pchain_n
        self.loss_n[:size] += other.loss_n
        if any(other.loss_fx):
            self.loss_fx = [a + b for a, b in zip(self.loss_fx, other.loss_fx + [0] * (len(self.loss_fx) - size),
                                                  strict=True)]


@dataclass
class Accumulator:
    """Sufficient statistics of the samples of one window."""

    layout: Layout
    n: int = 0
    loss_n: int = 0
    loss_fx: int = 0
    task_loss_n: list[int] = field(default_factory=list)
    task_loss_fx: list[int] = field(default_factory=list)
    c1: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    c3: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    nonnull: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    c1_nonnull: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    c3_nonnull: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    chain: int = 0
    pchain: int = 0
    pchain_n: int = 0
    t_min: float = math.inf
    t_max: float = -math.inf
    max_step: int = -1
    families: dict[str, FamilyStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = len(self.layout.tasks)
        for name in ("c1", "c3", "nonnull", "c1_nonnull", "c3_nonnull"):
            if getattr(self, name).shape[0] != tasks:
                setattr(self, name, np.zeros(tasks, np.int64))
        self.task_loss_n = self.task_loss_n or [0] * tasks
        self.task_loss_fx = self.task_loss_fx or [0] * tasks

    # ------------------------------------------------------------ update / merge

    def update(self, batch: BatchEvent) -> None:
        """Add one batch (already checked against the run's tasks)."""
        hits = Hits.of(batch, self.layout)
        self.n += batch.batch_size
        self.c1 += hits.top1.sum(axis=1)
        self.c3 += hits.top3.sum(axis=1)
        self.nonnull += hits.nonnull.sum(axis=1)
        self.c1_nonnull += (hits.top1 & hits.nonnull).sum(axis=1)
        self.c3_nonnull += (hits.top3 & hits.nonnull).sum(axis=1)
        self.chain += int(hits.chain.sum())
        self.pchain += int(hits.partial.sum())
        self.pchain_n += int(hits.any_nonnull.sum())
        self._update_losses(batch)
        self._update_time(batch.time, batch.step)
        for family, (labels, codes) in batch.subsets.items():
            run_codes = self.layout.codes(family, labels, codes)
            self._update_family(family, run_codes, hits, batch.sample_losses)

    def _update_losses(self, batch: BatchEvent) -> None:
        if batch.losses is not None:
            for size, loss in zip(batch.sizes, batch.losses, strict=True):
                self.loss_fx += fixed(loss) * size
            self.loss_n += batch.batch_size
        for i, task in enumerate(self.layout.tasks):
            for size, loss in zip(batch.sizes, batch.task_losses.get(task.name, ()), strict=False):
                self.task_loss_fx[i] += fixed(loss) * size
                self.task_loss_n[i] += size

    def _update_time(self, time: float, step: int) -> None:
        self.t_min = min(self.t_min, time)
        self.t_max = max(self.t_max, time)
        self.max_step = max(self.max_step, step)

    def _update_family(self, family: str, codes: np.ndarray, hits: Hits, sample_losses: np.ndarray | None) -> None:
        labels = len(self.layout.families[family])
        tasks = len(self.layout.tasks)
        stats = self.families.get(family)
        if stats is None:
            stats = self.families[family] = FamilyStats.empty(labels, tasks)
        stats.grow(labels)
        cells = codes[None, :] * tasks + np.arange(tasks)[:, None]
        stats.n += np.bincount(codes, minlength=labels)
        stats.c1 += np.bincount(cells[hits.top1], minlength=labels * tasks).reshape(labels, tasks)
        stats.c3 += np.bincount(cells[hits.top3], minlength=labels * tasks).reshape(labels, tasks)
        stats.chain += np.bincount(codes[hits.chain], minlength=labels)
        stats.pchain += np.bincount(codes[hits.partial], minlength=labels)
        stats.pchain_n += np.bincount(codes[hits.any_nonnull], minlength=labels)
        if sample_losses is not None:
            sums = fixed_sums_by_label(sample_losses, codes, labels)
            stats.loss_fx = [a + b for a, b in zip(stats.loss_fx, sums, strict=True)]
            stats.loss_n += np.bincount(codes, minlength=labels)

    def merge(self, other: Accumulator) -> None:
        """Add another accumulator of the same run in place (its arrays are only read)."""
        self.n += other.n
        self.loss_n += other.loss_n
        self.loss_fx += other.loss_fx
        self.chain += other.chain
        self.pchain += other.pchain
        self.pchain_n += other.pchain_n
        self.c1 += other.c1
        self.c3 += other.c3
        self.nonnull += other.nonnull
        self.c1_nonnull += other.c1_nonnull
        self.c3_nonnull += other.c3_nonnull
        self.task_loss_n = [a + b for a, b in zip(self.task_loss_n, other.task_loss_n, strict=True)]
        self.task_loss_fx = [a + b for a, b in zip(self.task_loss_fx, other.task_loss_fx, strict=True)]
        self.t_min, self.t_max = min(self.t_min, other.t_min), max(self.t_max, other.t_max)
        self.max_step = max(self.max_step, other.max_step)
        for family, stats in other.families.items():
            mine = self.families.get(family)
            if mine is None:
                mine = self.families[family] = FamilyStats.empty(stats.n.shape[0], len(self.layout.tasks))
            mine.merge(stats)

    def check(self) -> None:
        """Raise ValueError unless every array fits the layout (for states read from outside)."""
        tasks = len(self.layout.tasks)
        for name in ("c1", "c3", "nonnull", "c1_nonnull", "c3_nonnull"):
            if getattr(self, name).shape != (tasks,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected ({tasks},)")
        if len(self.task_loss_n) != tasks or len(self.task_loss_fx) != tasks:
            raise ValueError(f"task losses must have {tasks} entries")
        for family, stats in self.families.items():
            labels = len(self.layout.families.get(family, ()))
            sizes = {stats.n.shape, stats.chain.shape, stats.pchain.shape, stats.pchain_n.shape, stats.loss_n.shape}
            if len(sizes) != 1 or stats.n.shape[0] > labels or len(stats.loss_fx) != stats.n.shape[0]:
                raise ValueError(f"family {family!r}: arrays do not match its {labels} labels")
            if stats.c1.shape != (stats.n.shape[0], tasks) or stats.c3.shape != stats.c1.shape:
                raise ValueError(f"family {family!r}: per-task counts have the wrong shape")

    def copy(self) -> Accumulator:
        """An independent copy."""
        return Accumulator.from_dict(self.layout, self.to_dict())

    # ------------------------------------------------------------ compute

    def compute(self) -> Metrics:
        """Ratios of this window: ``{(family, label, suffix): value}``; percent for accuracies.

        The global metrics have ``family = label = None``. Metrics with an empty
        denominator are left out rather than reported as NaN.
        """
        out: Metrics = {}
        if self.n == 0:
            return out
        names = [t.name for t in self.layout.tasks]
        out.update(_group(None, None, self.n, self.c1, self.c3, self.chain, self.pchain, self.pchain_n, names))
        if self.loss_n:
            out[(None, None, "loss")] = ratio(self.loss_fx, self.loss_n)
        for i, name in enumerate(names):
            if self.task_loss_n[i]:
                out[(None, None, f"loss_{name}")] = ratio(self.task_loss_fx[i], self.task_loss_n[i])
        out.update(self._null_breakdown(names))
        for family, stats in self.families.items():
            out.update(self._family_metrics(family, stats, names))
        return out

    def _null_breakdown(self, names: list[str]) -> Metrics:
        out: Metrics = {}
        for i, name in enumerate(names):
            parts = (("non_null", self.nonnull[i], self.c1_nonnull[i], self.c3_nonnull[i]),
                     ("null", self.n - self.nonnull[i], self.c1[i] - self.c1_nonnull[i],
                      self.c3[i] - self.c3_nonnull[i]))
            for label, n, c1, c3 in parts:
                if n:
                    out[(NULL_FAMILY, label, f"acc1_{name}")] = _pct(c1, n)
                    out[(NULL_FAMILY, label, f"acc3_{name}")] = _pct(c3, n)
        return out

    def _family_metrics(self, family: str, stats: FamilyStats, names: list[str]) -> Metrics:
        out: Metrics = {}
        vocab = self.layout.families[family]
        for code in np.flatnonzero(stats.n).tolist():
            label = vocab[code]
            out.update(_group(family, label, int(stats.n[code]), stats.c1[code], stats.c3[code],
                              int(stats.chain[code]), int(stats.pchain[code]), int(stats.pchain_n[code]),
                              names))
            if stats.loss_n[code]:
                out[(family, label, "loss")] = ratio(stats.loss_fx[code], int(stats.loss_n[code]))
        return out

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe, lossless dict (big fixed-point sums as hex strings)."""
        return {
            "n": self.n, "loss_n": self.loss_n, "loss_fx": hex(self.loss_fx),
            "task_loss_n": list(self.task_loss_n), "task_loss_fx": [hex(v) for v in self.task_loss_fx],
            "c1": self.c1.tolist(), "c3": self.c3.tolist(), "nonnull": self.nonnull.tolist(),
            "c1_nonnull": self.c1_nonnull.tolist(), "c3_nonnull": self.c3_nonnull.tolist(),
            "chain": self.chain, "pchain": self.pchain, "pchain_n": self.pchain_n,
            "t_min": _time_out(self.t_min), "t_max": _time_out(self.t_max), "max_step": self.max_step,
            "families": {f: _family_to_dict(s) for f, s in self.families.items()},
        }

    @classmethod
    def from_dict(cls, layout: Layout, data: Mapping[str, Any]) -> Accumulator:
        """Inverse of ``to_dict``."""
        acc = cls(
            layout=layout, n=int(data["n"]), loss_n=int(data["loss_n"]), loss_fx=int(data["loss_fx"], 16),
            chain=int(data["chain"]), pchain=int(data["pchain"]), pchain_n=int(data["pchain_n"]),
            t_min=_time_in(data["t_min"], math.inf), t_max=_time_in(data["t_max"], -math.inf),
            max_step=int(data["max_step"]),
            families={f: _family_from_dict(v) for f, v in data["families"].items()},
        )
        # set after construction: __post_init__ sizes empty arrays, these must keep their own shape
        for name in ("c1", "c3", "nonnull", "c1_nonnull", "c3_nonnull"):
            setattr(acc, name, np.array(data[name], dtype=np.int64))
        acc.task_loss_n = [int(v) for v in data["task_loss_n"]]
        acc.task_loss_fx = [int(v, 16) for v in data["task_loss_fx"]]
        return acc


def _pct(correct: Any, total: Any) -> float:
    return (100 * int(correct)) / int(total)


def _group(family: str | None, label: str | None, n: int, c1: np.ndarray, c3: np.ndarray,
           chain: int, pchain: int, pchain_n: int, names: list[str]) -> Iterator[tuple[MetricId, float]]:
    yield (family, label, "chain_accuracy"), _pct(chain, n)
    if pchain_n:
        yield (family, label, "partial_chain_accuracy"), _pct(pchain, pchain_n)
    for i, name in enumerate(names):
        yield (family, label, f"acc1_{name}"), _pct(c1[i], n)
        yield (family, label, f"acc3_{name}"), _pct(c3[i], n)


def _time_out(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _time_in(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _family_to_dict(stats: FamilyStats) -> dict[str, Any]:
    names = ("n", "c1", "c3", "chain", "pchain", "pchain_n", "loss_n")
    out: dict[str, Any] = {k: getattr(stats, k).tolist() for k in names}
    out["loss_fx"] = [hex(v) for v in stats.loss_fx]
    return out


def _family_from_dict(data: Mapping[str, Any]) -> FamilyStats:
    arrays = {k: np.array(data[k], dtype=np.int64) for k in ("n", "chain", "pchain", "pchain_n", "loss_n")}
    labels = arrays["n"].shape[0]
    matrices = {k: np.array(data[k], dtype=np.int64).reshape(labels, -1) for k in ("c1", "c3")}
    return FamilyStats(**arrays, **matrices, loss_fx=[int(v, 16) for v in data["loss_fx"]])
