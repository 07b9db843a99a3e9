"""The common case of ``log_batch``, checked with as little work on the training thread as possible.

numpy integer arrays for every task, str label lists: every array is copied at once
(callers reuse their buffers: C-contiguous native int64 arrays, the usual, by one bytes
join, a memcpy each that keeps the GIL; others by one numpy concatenation into a per-thread
int64 buffer) and one ``maximum.reduceat`` over the copy's unsigned view
gives each array's largest index (a negative one wraps past every limit), compared with
the task's class count; the shapes and dtypes of a batch are checked once per layout and
then looked up. Label lists are only checked against the names already seen and kept as
a tuple (no list for the garbage collector to walk while the record waits in the queue);
their dictionary encoding is left to the sender thread (``encode_labels``). numpy str
arrays are coded at once against the family's known labels (``client._labels``: no str
object per sample), and the sender keeps only the labels used. Anything
unusual returns ``None`` and the caller takes the thorough path, whose errors name the
argument and the bad value.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from client._errors import InvalidRecord, InvalidValue
from client._labels import LabelCoder, Vocabulary, compact
from client._rules import NAME_PATTERN, RESERVED_FAMILY, check_vocabulary
from client._wire import (
    MAX_TOPK,
    MIN_TOPK,
    BatchEvent,
    Event,
    Labels,
    TaskInfo,
    encode_subset,
    index_type,
)

#: Marks labels not dictionary-encoded yet: ``subsets[family] == (labels per sample, RAW_CODES)``.
RAW_CODES = np.empty(0, dtype=np.int64)
RECORD_OVERHEAD_BYTES = 128  # a record's fields besides its arrays, encoded
MAX_LAYOUTS = 64  # distinct (shapes, dtypes) remembered; batch sizes vary little in practice

_ARRAY_TYPES = {np.ndarray}
_NUMBER_TYPES = frozenset({float, int, np.float64, np.float32, np.float16})
_FLOAT_TYPE = frozenset({float})
_SHAPE_AND_DTYPE = operator.attrgetter("shape", "dtype")
_INT64, _UINT64 = np.dtype(np.int64), np.dtype(np.uint64)  # native byte order


class _Layout:
    """Where each task's arrays lie in the concatenated buffer, and their bounds."""

    __slots__ = ("dtype", "int64", "ks", "length", "limits", "names", "shapes", "size", "slices", "starts", "task_ks")

    def __init__(self, names: Sequence[str], size: int, ks: Sequence[int], limits: Sequence[int],
                 int64: bool) -> None:
        self.names, self.size, self.ks = list(names), size, tuple(ks)
        self.int64 = int64  # every array native int64: their bytes can be joined as they are
        self.task_ks = tuple(sorted(zip(self.names, self.ks, strict=True)))  # part of the merge key
        self.shapes: dict[tuple[Any, ...], int] = {}  # the merge key's shape number by the rest (client._coalesce)
        self.dtype = index_type(max(limits))  # what the checked buffer is kept as while it waits
        counts = [size] * len(ks) + [size * k for k in ks]
        self.limits = [*limits, *limits]  # each segment's class count: its indices lie in [0, limit)
        ends = np.cumsum(counts).tolist()
        self.length = ends[-1]  # indices in the concatenated buffer
        self.starts = np.array([0, *ends[:-1]], dtype=np.intp)  # each segment's start, for one reduceat
        shapes = [None] * len(ks) + [(size, k) for k in ks]
        self.slices = [(slice(end - n, end), shape) for end, n, shape in zip(ends, counts, shapes, strict=True)]


class PackedBatch:
    """A checked batch as the fast path leaves it: every index array in one buffer, labels raw.

    The sender thread turns it into a ``BatchEvent`` (``unpacked``): the training thread
    only copies and checks.
    """

    __slots__ = ("epoch", "flat", "layout", "loss", "nbytes", "phase", "step", "subsets", "task_losses", "time")
    kind = "batch"

    def __init__(self, step: int, epoch: int, phase: str, time: float, flat: np.ndarray, layout: _Layout,
                 loss: float | None, task_losses: dict[str, float], subsets: dict[str, Labels]) -> None:
        self.step, self.epoch, self.phase, self.time = step, epoch, phase, time
        self.flat, self.layout = flat, layout
        # plain floats: a dict of floats is not tracked by the garbage collector, lists would be (a record
        # waits in the queue, and every tracked object brings the next collection on the training thread closer)
        self.loss, self.task_losses, self.subsets = loss, task_losses, subsets
        # its encoded size, about: a label code takes at most 4 bytes on the wire
        self.nbytes = RECORD_OVERHEAD_BYTES + flat.nbytes + 4 * layout.size * len(subsets)

    @property
    def batch_size(self) -> int:
        """Samples in the record."""
        return self.layout.size

    def unpack(self) -> BatchEvent:
        """The ``BatchEvent`` (arrays are views of the buffer; labels still raw)."""
        parts = [self.flat[at] if shape is None else self.flat[at].reshape(shape) for at, shape in self.layout.slices]
        names, count = self.layout.names, len(self.layout.names)
        return BatchEvent(step=self.step, epoch=self.epoch, phase=self.phase, time=self.time,
                          targets=dict(zip(names, parts[:count], strict=True)),
                          topk=dict(zip(names, parts[count:], strict=True)),
                          sizes=[self.layout.size], losses=None if self.loss is None else [self.loss],
                          task_losses={t: [v] for t, v in self.task_losses.items()},
                          subsets=dict(self.subsets))

    def encode(self) -> dict[str, Any]:
        """The binary wire form, straight from the buffer: what ``encode_event`` gives for the
        unpacked batch, with every task's indices in the buffer's type."""
        dtype, buffer = self.layout.dtype.str, self.flat
        arrays = [{"dtype": dtype, "shape": [self.layout.size] if shape is None else list(shape),
                   "data": buffer[at].tobytes()} for at, shape in self.layout.slices]
        names, count = self.layout.names, len(self.layout.names)
        out: dict[str, Any] = {"kind": "batch", "step": self.step, "epoch": self.epoch, "phase": self.phase,
                               "time": self.time, "targets": dict(zip(names, arrays[:count], strict=True)),
                               "topk": dict(zip(names, arrays[count:], strict=True))}
        if self.loss is not None:
            out["loss"] = self.loss
        if self.task_losses:
            out["task_losses"] = self.task_losses
        if self.subsets:
            out["subsets"] = {f: encode_subset(*_encoded(labels), True) for f, labels in self.subsets.items()}
        return out


#: What the client queues: wire events, and batches still packed by the fast path.
Record = Event | PackedBatch


class FastBatches:
    """Builds batch records for one client's tasks; caches layouts and the labels seen."""

    def __init__(self, tasks: Sequence[TaskInfo]) -> None:
        self.names = [t.name for t in tasks]
        self.count = len(self.names)
        self.name_set = frozenset(self.names)
        self.limits = [t.num_classes for t in tasks]
        self.min_k = [min(MIN_TOPK, t.num_classes) for t in tasks]
        self._layouts: dict[tuple[Any, ...], _Layout] = {}
        self._buffers = threading.local()
        self._labels: dict[str, set[str]] = {}
        self._coders: dict[str, LabelCoder] = {}

    def build(self, step: int, epoch: int, phase: str, time: float, loss: Any, task_losses: Any,
              targets: Any, topk: Any, subsets: Any) -> PackedBatch | None:
        """The record, or None when the thorough path must decide."""
        arrays = self._arrays(targets, topk)
        if arrays is None:
            return None
        layout, flat = arrays
        if type(loss) is float and loss - loss == 0.0:  # a finite Python float: the usual loss
            value: float | None = loss
        elif loss is None:
            value = None
        elif (number := _numbers([loss])) is None:
            return None
        else:
            value = number[0]
        per_task = self._task_losses(task_losses)
        labels = {} if subsets is None else self._subsets(subsets, layout.size)
        if per_task is None or labels is None:
            return None
        return PackedBatch(step, epoch, phase, time, flat, layout, value, per_task, labels)

    def _arrays(self, targets: Any, topk: Any) -> tuple[_Layout, np.ndarray] | None:
        if type(targets) is not dict or type(topk) is not dict or len(targets) != self.count \
                or len(topk) != self.count:
            return None
        try:
            arrays = [*map(targets.__getitem__, self.names), *map(topk.__getitem__, self.names)]
        except (KeyError, TypeError):
            return None
        if set(map(type, arrays)) != _ARRAY_TYPES:
            return None
        key = tuple(map(_SHAPE_AND_DTYPE, arrays))
        layout = self._layouts.get(key) or self._new_layout(key)
        if layout is None:
            return None
        try:  # the usual: C-contiguous int64 arrays, copied by one bytes join (a memcpy each, the GIL held)
            unsigned = np.frombuffer(b"".join(arrays), _UINT64) if layout.int64 else None
        except TypeError:  # an array that is not C-contiguous
            unsigned = None
        if unsigned is None:
            flat, unsigned = self._scratch(layout)  # this thread's buffer: no allocation, no page to touch anew
            np.concatenate(arrays, axis=None, out=flat)  # the layout checked every dtype casts safely to int64
        # each segment's largest index, unsigned: a negative index wraps past every limit
        if any(map(operator.ge, np.maximum.reduceat(unsigned, layout.starts).tolist(), layout.limits)):
            return None
        # a quarter of the bytes to hold until the service has them (the int64 copy goes at once)
        return layout, unsigned.astype(layout.dtype)

    def _scratch(self, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
        """The calling thread's int64 buffer for ``layout`` and its uint64 view (threads may log at once)."""
        try:
            buffers: dict[int, tuple[np.ndarray, np.ndarray]] = self._buffers.by_layout
        except AttributeError:
            buffers = self._buffers.by_layout = {}
        found = buffers.get(id(layout))
        if found is None or len(found[0]) != layout.length:
            if len(buffers) >= MAX_LAYOUTS:
                buffers.clear()
            flat = np.empty(layout.length, np.int64)
            found = buffers[id(layout)] = (flat, flat.view(np.uint64))
        return found

    def _new_layout(self, key: tuple[Any, ...]) -> _Layout | None:
        shapes, dtypes = [s for s, _ in key], [d for _, d in key]
        if not all(d.kind in "iu" and np.can_cast(d, np.int64) for d in dtypes):
            return None
        ys, ps = shapes[:self.count], shapes[self.count:]
        size = ys[0][0] if len(ys[0]) == 1 else 0
        if size == 0 or any(y != (size,) for y in ys):
            return None
        if not all(len(p) == 2 and p[0] == size and min_k <= p[1] <= MAX_TOPK
                   for p, min_k in zip(ps, self.min_k, strict=True)):
            return None
        if len(self._layouts) >= MAX_LAYOUTS:
            self._layouts.clear()
        layout = self._layouts[key] = _Layout(self.names, size, [p[1] for p in ps], self.limits,
                                              all(d == _INT64 for d in dtypes))
        return layout

    def _task_losses(self, task_losses: Any) -> dict[str, float] | None:
        if task_losses is None:
            return {}
        if type(task_losses) is not dict or not task_losses.keys() <= self.name_set:
            return None
        values = list(task_losses.values())
        if _FLOAT_TYPE.issuperset(map(type, values)) and math.isfinite(sum(values)):  # the usual: Python floats
            return dict(task_losses)
        numbers = _numbers(values)
        return None if numbers is None else dict(zip(task_losses, numbers, strict=True))

    def _subsets(self, subsets: Any, size: int) -> dict[str, Labels] | None:
        if type(subsets) is not dict:
            return None
        out: dict[str, Labels] = {}
        for family, labels in subsets.items():
            if type(labels) is np.ndarray:
                if labels.dtype.kind != "U" or labels.shape != (size,):
                    return None
                coded = self._coded(family, labels)
                if coded is not None:
                    out[family] = coded
                    continue
                labels = labels.tolist()  # no lookup table for these labels: one str per sample
            if type(labels) is not list or len(labels) != size:
                return None
            seen = self._labels.get(family)
            try:  # the steady state: no new label
                known = seen is not None and seen.issuperset(labels)
            except TypeError:  # unhashable labels
                return None
            if not known and not self._learn(family, labels):
                return None
            out[family] = (tuple(labels), RAW_CODES)
        return out

    def _coded(self, family: Any, labels: np.ndarray) -> Labels | None:
        """A numpy str array's codes, computed at once (``client._labels``); None: check it as a list."""
        coder = self._coders.get(family)
        if coder is not None:
            codes = coder.encode(labels)
            if codes is not None or not coder.has_table(labels):
                return None if codes is None else (coder.vocabulary, codes)
        if not self._learn(family, np.unique(labels).tolist()):  # new labels (rare): check and learn them
            return None
        coder = self._coders[family] = LabelCoder(self._labels[family])
        codes = coder.encode(labels)
        return None if codes is None else (coder.vocabulary, codes)

    def _learn(self, family: Any, labels: list[Any]) -> bool:
        """Remember the new labels of ``family``; False if the family or a label is not a valid name."""
        if type(family) is not str or family == RESERVED_FAMILY or not NAME_PATTERN.match(family):
            return False
        try:
            new = set(labels) - self._labels.get(family, set())
        except TypeError:  # unhashable labels
            return False
        if not all(type(v) is str and NAME_PATTERN.match(v) for v in new):
            return False
        self.admit(family, new)
        return True

    def admit(self, family: str, labels: Iterable[str]) -> None:
        """Remember checked labels of ``family``, refusing them past the run's limits.

        The limits hold per run (the service checks the union of all ranks); a rank whose
        own labels pass them is refused here, at the call, not later with its records.

        Raises:
            InvalidRecord: more than 64 families or 4,096 labels in a family.
        """
        known = self._labels.get(family, set())
        new = set(labels) - known
        if not new:
            return
        try:
            check_vocabulary(len(self._labels) + (family not in self._labels), {family: len(known) + len(new)})
        except InvalidValue as exc:
            raise InvalidRecord(str(exc)) from exc
        self._labels.setdefault(family, set()).update(new)


def _numbers(values: list[Any]) -> list[float] | None:
    """Finite Python floats, or None (the thorough path names the bad value)."""
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        return None
    try:
        numbers = list(map(float, values))
    except OverflowError:  # an int too large for a float: the thorough path says so
        return None
    return numbers if math.isfinite(sum(numbers)) else None


def unpacked(record: Record) -> Event:
    """The wire event of a queued record, labels dictionary-encoded (on the sender thread)."""
    return encode_labels(record.unpack() if isinstance(record, PackedBatch) else record)


def encode_labels(event: Event) -> Event:
    """Dictionary-encode labels left raw or coded against all known labels by the fast path (sender thread)."""
    if isinstance(event, BatchEvent):
        for family, labels in event.subsets.items():
            if labels[1] is RAW_CODES or type(labels[0]) is Vocabulary:
                event.subsets[family] = _encoded(labels)
    return event


def _encoded(labels: Labels) -> Labels:
    vocabulary, codes = labels
    if type(vocabulary) is Vocabulary:
        return compact(vocabulary, codes)
    return _dictionary(vocabulary) if codes is RAW_CODES else labels


def _dictionary(labels: Sequence[str]) -> Labels:
    """(sorted distinct labels, each sample's code): one byte a sample for up to 256 labels."""
    vocabulary = sorted(set(labels))
    index = dict(zip(vocabulary, range(len(vocabulary)), strict=True))
    # index.get: every label is in the index, and a builtin method is called faster than __getitem__
    if len(vocabulary) <= 256:  # the usual case: a few labels
        return vocabulary, np.frombuffer(bytes(map(index.get, labels)), dtype=np.uint8)  # type: ignore[arg-type]
    return vocabulary, np.fromiter(map(index.get, labels), dtype=np.int32, count=len(labels))


def raw_label_bytes(labels: Mapping[str, Labels]) -> int:
    """Encoded size estimate of labels left to the sender (one int per sample when raw)."""
    return sum(4 * len(v) if codes is RAW_CODES else codes.nbytes for v, codes in labels.values()
               if codes is RAW_CODES or type(v) is Vocabulary)
