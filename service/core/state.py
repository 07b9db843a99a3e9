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

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client._rules import RESERVED_FAMILY
from client._wire import BatchBlock, BatchEvent, TaskInfo
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
        self.columns = Columns(len(tasks))

    def codes(self, family: str, labels: Sequence[str], local_codes: np.ndarray) -> np.ndarray:
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

    def block_codes(self, family: str, labels: Sequence[str], local_codes: np.ndarray,
                    offsets: np.ndarray) -> np.ndarray:
        """``codes`` for a block whose rows are ``offsets``-delimited slices of ``local_codes``.

        New labels are added row by row, each row's in sorted order: the order the rows'
        records sent one by one would add them in, so both give the same vocabulary.
        """
        known = self._index.get(family, {})
        if any(label not in known for label in labels):
            bounds = offsets.tolist()
            for a, b in itertools.pairwise(bounds):
                used = np.unique(local_codes[a:b]).tolist()
                self.codes(family, sorted(labels[c] for c in used), np.empty(0, np.int64))
                if all(label in self._index[family] for label in labels):
                    break
        return self.codes(family, labels, local_codes)

    def sizes_with(self, batches: Sequence[BatchEvent | BatchBlock]) -> tuple[int, dict[str, int]]:
        """Families, and labels of each family a batch adds to, once ``batches`` are in."""
        new: dict[str, set[str]] = {}
        for batch in batches:
            for family, (labels, _) in batch.subsets.items():
                known = self._index.get(family, {})
                new.setdefault(family, set()).update(v for v in labels if v not in known)
        families = len(self.families) + sum(1 for f in new if f not in self.families)
        return families, {f: len(self.families.get(f, ())) + len(v) for f, v in new.items() if v}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe vocabularies."""
        return {f: list(v) for f, v in self.families.items()}


class Columns:
    """Where each count lives in an accumulator's vector and a family's table (``T`` tasks).

    Hit rows (one per sample): top1[T], top3[T], nonnull[T], top1&nonnull[T], top3&nonnull[T],
    chain, partial, any_nonnull. An accumulator's ``counts`` are their sums followed by n,
    loss_n and task_loss_n[T]; a family's table has, per label, the sums of top1[T], top3[T],
    chain, partial, any_nonnull, then n and loss_n.
    """

    def __init__(self, tasks: int) -> None:
        t = tasks
        self.c1, self.c3, self.nonnull = slice(0, t), slice(t, 2 * t), slice(2 * t, 3 * t)
        self.c1_nonnull, self.c3_nonnull = slice(3 * t, 4 * t), slice(4 * t, 5 * t)
        self.chain, self.pchain, self.pchain_n = 5 * t, 5 * t + 1, 5 * t + 2
        self.hit_rows = 5 * t + 3
        self.n, self.loss_n, self.task_loss_n = 5 * t + 3, 5 * t + 4, slice(5 * t + 5, 6 * t + 5)
        self.width = 6 * t + 5
        # family table: the hit rows it sums, then n and loss_n
        self.family_rows = np.r_[0:2 * t, 5 * t:5 * t + 3]
        self.f_c1, self.f_c3 = slice(0, t), slice(t, 2 * t)
        self.f_chain, self.f_pchain, self.f_pchain_n = 2 * t, 2 * t + 1, 2 * t + 2
        self.f_n, self.f_loss_n = 2 * t + 3, 2 * t + 4
        self.f_width = 2 * t + 5


def hit_rows(batches: Sequence[BatchEvent], layout: Layout) -> np.ndarray:
    """Per-sample outcomes of ``batches`` side by side: bool [hit rows, samples] (see ``Columns``)."""
    names = [t.name for t in layout.tasks]
    return hits_of(layout, {n: _joined([b.targets[n] for b in batches]) for n in names},
                   {n: _joined_topk([b.topk[n] for b in batches]) for n in names})


def hits_of(layout: Layout, targets: Mapping[str, np.ndarray], topk: Mapping[str, np.ndarray]) -> np.ndarray:
    """``hit_rows`` of joined columns: each task's targets int[S] and top-k int[S, k] (first 3 used)."""
    tasks, cols = layout.tasks, layout.columns
    hits = np.empty((cols.hit_rows, next(iter(targets.values())).shape[0]), dtype=bool)
    t = len(tasks)
    for i, task in enumerate(tasks):
        y, top = targets[task.name], topk[task.name]
        np.equal(top[:, 0], y, out=hits[i])
        hits[t + i] = hits[i]
        for column in range(1, min(3, top.shape[1])):  # column by column: faster than any() over a short axis
            hits[t + i] |= top[:, column] == y
        np.not_equal(y, task.null_index, out=hits[2 * t + i])
    np.logical_and(hits[0:t], hits[2 * t:3 * t], out=hits[3 * t:4 * t])
    np.logical_and(hits[t:2 * t], hits[2 * t:3 * t], out=hits[4 * t:5 * t])
    np.all(hits[0:t], axis=0, out=hits[cols.chain])
    np.any(hits[2 * t:3 * t], axis=0, out=hits[cols.pchain_n])
    # partially chain-correct: top-1 right wherever the target is not null, and some target is not null
    np.all(hits[0:t] | ~hits[2 * t:3 * t], axis=0, out=hits[cols.pchain])
    hits[cols.pchain] &= hits[cols.pchain_n]
    return hits


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _joined_topk(arrays: list[np.ndarray]) -> np.ndarray:
    """The first (up to) 3 columns of each top-k array, stacked; narrower ones padded with -1."""
    cut = [a[:, :3] for a in arrays]
    width = max(a.shape[1] for a in cut)
    if any(a.shape[1] != width for a in cut):
        cut = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in cut]
    return _joined(cut)


@dataclass
class FamilyStats:
    """Per-label statistics of one subset family: ``table[label code]`` (see ``Columns``)."""

    table: np.ndarray
    loss_fx: list[int]

    @classmethod
    def empty(cls, labels: int, width: int) -> FamilyStats:
        """Zeros for ``labels`` labels."""
        return cls(np.zeros((labels, width), dtype=np.int64), [0] * labels)

    @property
    def labels(self) -> int:
        """Labels this table has rows for."""
        return int(self.table.shape[0])

    def grow(self, labels: int) -> None:
        """Pad to ``labels`` labels."""
        extra = labels - self.labels
        if extra > 0:
            self.table = np.concatenate([self.table, np.zeros((extra, self.table.shape[1]), np.int64)])
            self.loss_fx = self.loss_fx + [0] * extra

    def merge(self, other: FamilyStats) -> None:
        """Add ``other`` in place (``other`` may know fewer labels, never more after growing)."""
        size = other.table.shape[0]  # labels are append-only: other's codes are a prefix of ours
        if size > self.table.shape[0]:
            self.grow(size)
        self.table[:size] += other.table
        if any(other.loss_fx):
            self.loss_fx = [a + b for a, b in zip(self.loss_fx, other.loss_fx + [0] * (self.labels - size),
                                                  strict=True)]


@dataclass
class Accumulator:
    """Sufficient statistics of the samples of one window: integer ``counts`` (see ``Columns``),
    exact fixed-point loss sums, the time span and the largest step."""

    layout: Layout
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    loss_fx: int = 0
    task_loss_fx: list[int] = field(default_factory=list)
    t_min: float = math.inf
    t_max: float = -math.inf
    max_step: int = -1
    families: dict[str, FamilyStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.counts.shape != (self.layout.columns.width,):
            self.counts = np.zeros(self.layout.columns.width, np.int64)
        self.task_loss_fx = self.task_loss_fx or [0] * len(self.layout.tasks)

    @property
    def n(self) -> int:
        """Samples in the window."""
        return int(self.counts[self.layout.columns.n])

    # ------------------------------------------------------------ update / merge

    def update(self, batch: BatchEvent) -> None:
        """Add one batch (already checked against the run's tasks)."""
        self.merge(Accumulator.of_batches(self.layout, [batch])[0])

    @classmethod
    def of_batches(cls, layout: Layout, batches: Sequence[BatchEvent]) -> list[Accumulator]:
        """One accumulator per batch, computed for all of them at once (no per-sample Python)."""
        families: dict[str, tuple[list[int], np.ndarray]] = {}
        for family in {f for b in batches for f in b.subsets}:
            having = [i for i, b in enumerate(batches) if family in b.subsets]
            codes = [layout.codes(family, *batches[i].subsets[family]) for i in having]
            families[family] = (having, _joined(codes))
        return cls._of_rows(layout, batches, hit_rows(batches, layout), families)

    @classmethod
    def of_block(cls, layout: Layout, block: BatchBlock) -> list[Accumulator]:
        """One accumulator per row of ``block``, from its columns as they are (nothing joined)."""
        every = list(range(block.rows))
        families = {f: (every, layout.block_codes(f, labels, codes, block.offsets))
                    for f, (labels, codes) in block.subsets.items()}
        return cls._of_rows(layout, block.batches(), hits_of(layout, block.targets, block.topk), families)

    @classmethod
    def _of_rows(cls, layout: Layout, batches: Sequence[BatchEvent], hits: np.ndarray,
                 families: Mapping[str, tuple[list[int], np.ndarray]]) -> list[Accumulator]:
        """Accumulators of ``batches`` from their outcomes and, per family, the batches that carry
        it with the run's codes of their samples (joined)."""
        cols = layout.columns
        sizes = np.array([b.batch_size for b in batches], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        counts = np.zeros((len(batches), cols.width), dtype=np.int64)
        counts[:, :cols.hit_rows] = _segment_sums(hits, starts).T
        counts[:, cols.n] = sizes
        counts[:, cols.loss_n] = [b.batch_size if b.losses is not None else 0 for b in batches]
        names = [t.name for t in layout.tasks]
        for i, name in enumerate(names):
            counts[:, cols.task_loss_n.start + i] = [b.batch_size if name in b.task_losses else 0 for b in batches]
        accs = [cls(layout, counts[i]) for i in range(len(batches))]
        for acc, batch in zip(accs, batches, strict=True):
            if batch.losses is not None:
                acc.loss_fx = _fixed_total(batch.sizes, batch.losses)
            if batch.task_losses:
                acc.task_loss_fx = [_fixed_total(batch.sizes, batch.task_losses[n]) if n in batch.task_losses else 0
                                    for n in names]
            acc.t_min = acc.t_max = batch.time
            acc.max_step = batch.step
        if families:
            family_hits = hits[cols.family_rows]  # the rows every family sums, taken once
            for family, (having, codes) in families.items():
                _add_family(accs, batches, family, having, codes, family_hits, starts, sizes)
        return accs

    def merge(self, other: Accumulator) -> None:
        """Add another accumulator of the same run in place (its arrays are only read)."""
        self.counts += other.counts
        if other.loss_fx:
            self.loss_fx += other.loss_fx
        if any(other.task_loss_fx):
            self.task_loss_fx = [a + b for a, b in zip(self.task_loss_fx, other.task_loss_fx, strict=True)]
        if other.t_min < self.t_min:
            self.t_min = other.t_min
        if other.t_max > self.t_max:
            self.t_max = other.t_max
        if other.max_step > self.max_step:
            self.max_step = other.max_step
        for family, stats in other.families.items():
            mine = self.families.get(family)
            if mine is None:
                mine = self.families[family] = FamilyStats.empty(stats.labels, self.layout.columns.f_width)
            mine.merge(stats)

    def check(self) -> None:
        """Raise ValueError unless every array fits the layout (for states read from outside)."""
        cols = self.layout.columns
        if self.counts.shape != (cols.width,):
            raise ValueError(f"counts have shape {self.counts.shape}, expected ({cols.width},)")
        if len(self.task_loss_fx) != len(self.layout.tasks):
            raise ValueError(f"task losses must have {len(self.layout.tasks)} entries")
        for family, stats in self.families.items():
            labels = len(self.layout.families.get(family, ()))
            if stats.table.ndim != 2 or stats.table.shape[1] != cols.f_width or stats.labels > labels \
                    or len(stats.loss_fx) != stats.labels:
                raise ValueError(f"family {family!r}: arrays do not match its {labels} labels")

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
        cols, counts = self.layout.columns, self.counts.tolist()
        names = [t.name for t in self.layout.tasks]
        out.update(_group(None, None, counts[cols.n], counts[cols.c1], counts[cols.c3], counts[cols.chain],
                          counts[cols.pchain], counts[cols.pchain_n], names))
        if counts[cols.loss_n]:
            out[(None, None, "loss")] = ratio(self.loss_fx, counts[cols.loss_n])
        for name, n, fx in zip(names, counts[cols.task_loss_n], self.task_loss_fx, strict=True):
            if n:
                out[(None, None, f"loss_{name}")] = ratio(fx, n)
        out.update(self._null_breakdown(names, counts))
        for family, stats in self.families.items():
            out.update(self._family_metrics(family, stats, names))
        return out

    def _null_breakdown(self, names: list[str], counts: list[int]) -> Metrics:
        out: Metrics = {}
        cols, n = self.layout.columns, counts[self.layout.columns.n]
        for i, name in enumerate(names):
            nonnull, c1, c3 = counts[cols.nonnull][i], counts[cols.c1][i], counts[cols.c3][i]
            c1_nn, c3_nn = counts[cols.c1_nonnull][i], counts[cols.c3_nonnull][i]
            for label, total, right1, right3 in (("non_null", nonnull, c1_nn, c3_nn),
                                                 ("null", n - nonnull, c1 - c1_nn, c3 - c3_nn)):
                if total:
                    out[(NULL_FAMILY, label, f"acc1_{name}")] = _pct(right1, total)
                    out[(NULL_FAMILY, label, f"acc3_{name}")] = _pct(right3, total)
        return out

    def _family_metrics(self, family: str, stats: FamilyStats, names: list[str]) -> Metrics:
        out: Metrics = {}
        cols, vocab = self.layout.columns, self.layout.families[family]
        for code in np.flatnonzero(stats.table[:, cols.f_n]).tolist():
            row, label = stats.table[code].tolist(), vocab[code]
            out.update(_group(family, label, row[cols.f_n], row[cols.f_c1], row[cols.f_c3], row[cols.f_chain],
                              row[cols.f_pchain], row[cols.f_pchain_n], names))
            if row[cols.f_loss_n]:
                out[(family, label, "loss")] = ratio(stats.loss_fx[code], row[cols.f_loss_n])
        return out

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe, lossless dict (big fixed-point sums as hex strings)."""
        cols, counts = self.layout.columns, self.counts.tolist()
        return {
            "n": counts[cols.n], "loss_n": counts[cols.loss_n], "loss_fx": hex(self.loss_fx),
            "task_loss_n": counts[cols.task_loss_n], "task_loss_fx": [hex(v) for v in self.task_loss_fx],
            "c1": counts[cols.c1], "c3": counts[cols.c3], "nonnull": counts[cols.nonnull],
            "c1_nonnull": counts[cols.c1_nonnull], "c3_nonnull": counts[cols.c3_nonnull],
            "chain": counts[cols.chain], "pchain": counts[cols.pchain], "pchain_n": counts[cols.pchain_n],
            "t_min": _time_out(self.t_min), "t_max": _time_out(self.t_max), "max_step": self.max_step,
            "families": {f: _family_to_dict(s, cols) for f, s in self.families.items()},
        }

    @classmethod
    def from_dict(cls, layout: Layout, data: Mapping[str, Any]) -> Accumulator:
        """Inverse of ``to_dict``; a part of the wrong size raises ValueError."""
        cols = layout.columns
        counts = np.zeros(cols.width, dtype=np.int64)
        for name in ("c1", "c3", "nonnull", "c1_nonnull", "c3_nonnull", "task_loss_n"):
            counts[getattr(cols, name)] = _ints(data[name], len(layout.tasks), name)
        for name in ("chain", "pchain", "pchain_n", "n", "loss_n"):
            counts[getattr(cols, name)] = int(data[name])
        acc = cls(layout=layout, counts=counts, loss_fx=int(data["loss_fx"], 16),
                  task_loss_fx=[int(v, 16) for v in data["task_loss_fx"]],
                  t_min=_time_in(data["t_min"], math.inf), t_max=_time_in(data["t_max"], -math.inf),
                  max_step=int(data["max_step"]),
                  families={f: _family_from_dict(v, cols) for f, v in data["families"].items()})
        if len(acc.task_loss_fx) != len(layout.tasks):  # __post_init__ would pad an empty list
            raise ValueError(f"task_loss_fx must have {len(layout.tasks)} entries")
        return acc


def _add_family(accs: list[Accumulator], batches: Sequence[BatchEvent], family: str, having: list[int],
                code: np.ndarray, family_hits: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> None:
    """Per-label sums of ``family`` for the batches ``having`` it (samples coded ``code``), a bincount a hit row."""
    layout, cols = accs[0].layout, accs[0].layout.columns
    labels = len(layout.families[family])
    rows = family_hits
    if len(having) < len(batches):  # only the samples of the batches that carry the family
        rows = rows[:, np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in having])]
    bounds = np.concatenate([[0], np.cumsum(sizes[having])]).tolist()
    if labels <= FEW_LABELS:
        tables = _label_sums_by_mask(rows, code, labels, bounds[:-1], cols)
    else:
        tables = _label_sums_by_bincount(rows, code, labels, sizes[having], cols)
    for j, i in enumerate(having):
        stats = FamilyStats(tables[j], [0] * labels)
        losses = batches[i].sample_losses
        if losses is not None:
            stats.loss_fx = fixed_sums_by_label(losses, code[bounds[j]:bounds[j + 1]], labels)
            stats.table[:, cols.f_loss_n] = stats.table[:, cols.f_n]
        accs[i].families[family] = stats


#: up to this many labels a family's per-label sums take one mask a label and one ``reduceat``
#: (a 20-row block: 53 vs 168 µs for 2 labels, 76 vs 140 µs for 3); more labels, one bincount a column
FEW_LABELS = 3


def _label_sums_by_mask(rows: np.ndarray, code: np.ndarray, labels: int, starts: list[int],
                        cols: Columns) -> np.ndarray:
    """[batches, labels, f_width]: each batch's (segments at ``starts``) sums of ``rows`` per label."""
    count, samples = rows.shape
    onehot = code == np.arange(labels)[:, None]  # [labels, samples]
    both = (rows[None, :, :] & onehot[:, None, :]).reshape(labels * count, samples)
    sums = _segment_sums(both, starts).reshape(labels, count, len(starts))
    tables = np.zeros((len(starts), labels, cols.f_width), dtype=np.int64)
    tables[:, :, :count] = sums.transpose(2, 0, 1)
    tables[:, :, cols.f_n] = _segment_sums(onehot, starts).T
    return tables


def _segment_sums(flags: Any, starts: Any) -> np.ndarray:
    """[rows, segments]: how many of each row's flags are set in each segment (a segment starts at
    each of ``starts`` and ends at the next one).

    The flags are read as bytes and summed in int32: exact, since a segment is one record, far
    fewer than 2**31 samples (65,536 at most by default), and ~40 % faster than a bool reduction
    cast to int64.
    """
    return np.add.reduceat(np.ascontiguousarray(flags).view(np.uint8), starts, axis=1, dtype=np.int32)


def _label_sums_by_bincount(rows: np.ndarray, code: np.ndarray, labels: int, sizes: np.ndarray,
                            cols: Columns) -> np.ndarray:
    """As ``_label_sums_by_mask``, by one weighted bincount a row over (batch, label) cells."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    cell = owner * labels + code
    cells = len(sizes) * labels
    sums = np.zeros((cells, cols.f_width), dtype=np.int64)
    for column, row in enumerate(rows):  # counts as float64 weights: exact below 2**53 samples
        sums[:, column] = np.bincount(cell, weights=row, minlength=cells)
    sums[:, cols.f_n] = np.bincount(cell, minlength=cells)
    return sums.reshape(len(sizes), labels, cols.f_width)


def _fixed_total(sizes: Sequence[int], means: Sequence[float]) -> int:
    """Exact fixed-point sum of the segments' mean losses weighted by their sizes."""
    if len(sizes) == 1:
        return fixed(means[0]) * sizes[0]
    return sum(fixed(mean) * size for size, mean in zip(sizes, means, strict=True))


def _ints(values: Any, size: int, name: str) -> np.ndarray:
    array = np.array(values, dtype=np.int64)
    if array.shape != (size,):
        raise ValueError(f"{name} has shape {array.shape}, expected ({size},)")
    return array


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


def _family_to_dict(stats: FamilyStats, cols: Columns) -> dict[str, Any]:
    table = stats.table
    out: dict[str, Any] = {"n": table[:, cols.f_n].tolist(), "c1": table[:, cols.f_c1].tolist(),
                           "c3": table[:, cols.f_c3].tolist(), "chain": table[:, cols.f_chain].tolist(),
                           "pchain": table[:, cols.f_pchain].tolist(), "pchain_n": table[:, cols.f_pchain_n].tolist(),
                           "loss_n": table[:, cols.f_loss_n].tolist()}
    out["loss_fx"] = [hex(v) for v in stats.loss_fx]
    return out


def _family_from_dict(data: Mapping[str, Any], cols: Columns) -> FamilyStats:
    n = np.array(data["n"], dtype=np.int64)
    if n.ndim != 1:
        raise ValueError(f"family n has shape {n.shape}, expected one count per label")
    labels, tasks = n.shape[0], cols.f_c1.stop
    table = np.zeros((labels, cols.f_width), dtype=np.int64)
    table[:, cols.f_n] = n
    for name in ("chain", "pchain", "pchain_n", "loss_n"):
        table[:, getattr(cols, f"f_{name}")] = _ints(data[name], labels, name)
    for name in ("c1", "c3"):
        table[:, getattr(cols, f"f_{name}")] = np.array(data[name], dtype=np.int64).reshape(labels, tasks)
    loss_fx = [int(v, 16) for v in data["loss_fx"]]
    if len(loss_fx) != labels:
        raise ValueError(f"family loss_fx has {len(loss_fx)} entries for {labels} labels")
    return FamilyStats(table, loss_fx)
