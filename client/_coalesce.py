"""Lossless merging of queued records: the queue's first answer to being full.

Two records merge when the service ends up in the same state whether it gets them apart
or merged:

- batches of the same step, epoch and phase that carry the same optional fields (loss,
  task losses, per-sample losses, subset families) and the same k per task. The merged
  record lists each record's batch size in ``sizes`` and one loss per segment, arrays are
  concatenated, subset vocabularies are merged and the codes remapped. It carries the
  later ``time`` (the moment its last segment was logged).
- scalars of the same kind and step: the values dicts merge, later values win (as the
  service's per-rank tables do).

A record never merges across a control record (end_epoch, complete, checkpoint): the key
includes the number of control records queued before it, so a merge cannot move a record
past a marker or an epoch end.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from client._fastpath import RECORD_OVERHEAD_BYTES, PackedBatch, Record, raw_label_bytes, unpacked
from client._wire import (
    BatchEvent,
    Event,
    Labels,
    ScalarEvent,
    block_key,
    block_of,
    block_spans,
    encode_event,
    event_block_key,
)

Key = tuple[Hashable, ...]

#: Every batch shape (``shape_key``) seen in this process, numbered: a merge key holds the number, so the
#: queue hashes a flat tuple of a few scalars (a tuple does not keep its hash, and a full queue hashes a
#: key several times a put). ``count`` hands out numbers atomically for clients on several threads.
_SHAPES: dict[Key, int] = {}
_NUMBERS = itertools.count()


def coalesce_key(event: Record, barrier: int) -> Key | None:
    """The merge key of a data record, or None for control records (never merged)."""
    if type(event) is PackedBatch:  # the common case first
        return ("batch", barrier, event.step, event.epoch, event.phase, _packed_shape(event))
    if isinstance(event, ScalarEvent):
        return (event.kind, barrier, event.step)
    if not isinstance(event, BatchEvent):
        return None
    return ("batch", barrier, event.step, event.epoch, event.phase, _shape_number(block_key(event)))


def _packed_shape(event: PackedBatch) -> int:
    """The number of a packed batch's ``shape_key``, looked up by what varies beyond its layout."""
    known = event.layout.shapes
    probe = (event.loss is None, tuple(event.task_losses), tuple(event.subsets))
    number = known.get(probe)
    if number is None:
        number = known[probe] = _shape_number(shape_key(event))
    return number


def _shape_number(shape: Key) -> int:
    return _SHAPES.setdefault(shape, next(_NUMBERS))


def shape_key(event: BatchEvent | PackedBatch) -> Key:
    """``client._wire.block_key`` of a batch, packed or not (a packed batch has no per-sample
    losses): what batches must share to merge or to go in one block."""
    if isinstance(event, PackedBatch):
        return (event.loss is None, True, tuple(sorted(event.task_losses)), tuple(sorted(event.subsets)),
                event.layout.task_ks)
    return block_key(event)


def record_nbytes(event: Record) -> int:
    """A cheap estimate of a record's encoded size."""
    if isinstance(event, PackedBatch):
        return event.nbytes
    if isinstance(event, ScalarEvent):
        return RECORD_OVERHEAD_BYTES + 48 * len(event.values)
    if not isinstance(event, BatchEvent):
        return RECORD_OVERHEAD_BYTES
    arrays = [
        *event.targets.values(),
        *event.topk.values(),
        *(c for _, c in event.subsets.values()),
    ]
    if event.sample_losses is not None:
        arrays.append(event.sample_losses)
    return RECORD_OVERHEAD_BYTES + sum(a.nbytes for a in arrays) + raw_label_bytes(event.subsets)


def record_samples(event: Record) -> int:
    """Samples in a record (0 for scalars and control records)."""
    return event.batch_size if isinstance(event, BatchEvent | PackedBatch) else 0


def encode_delivery(parts: Sequence[list[Record]], binary: bool, index_types: Mapping[str, np.dtype[Any]]
                    ) -> tuple[list[list[Record]], list[dict[str, Any]]]:
    """A delivery's wire events and the queued records each stands for.

    Binary deliveries put runs of batches that share their shape, with the scalars logged
    among them, in columnar blocks (``client._wire.BatchBlock``): the service decodes and
    checks each block once instead of once a record.
    """
    if not binary:
        return list(parts), [encode_record(p, binary, index_types) for p in parts]
    groups: list[list[Record]] = []
    encoded: list[dict[str, Any]] = []
    for a, b in block_spans(parts, _part_block_key):
        if b - a == 1:
            groups.append(parts[a])
            encoded.append(encode_record(parts[a], binary, index_types))
        else:
            events = [merge(p) for p in parts[a:b]]
            groups.append([r for p in parts[a:b] for r in p])
            encoded.append(encode_event(block_of(cast(list[BatchEvent | ScalarEvent], events)), binary, index_types))
    return groups, encoded


def _part_block_key(part: Sequence[Record]) -> Hashable | None:
    """``shape_key`` of a queued part (its records share it), ``SCALAR`` or None (control records)."""
    record = part[0]
    return shape_key(record) if isinstance(record, BatchEvent | PackedBatch) else event_block_key(record)


def encode_record(parts: Sequence[Record], binary: bool, index_types: Mapping[str, np.dtype[Any]]) -> dict[str, Any]:
    """The wire form of a queued record (its parts merged); a lone packed batch skips the unpacking."""
    if binary and len(parts) == 1 and isinstance(parts[0], PackedBatch):
        return parts[0].encode()
    return encode_event(merge(parts), binary, index_types)


def merge(records: Sequence[Record]) -> Event:
    """Merge records that share a coalesce key, in logging order, into one."""
    parts = [unpacked(r) for r in records]
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], BatchEvent):
        return _merge_batches(cast(Sequence[BatchEvent], parts))
    return _merge_scalars(cast(Sequence[ScalarEvent], parts))


def _merge_batches(parts: Sequence[BatchEvent]) -> BatchEvent:
    first = parts[0]
    return BatchEvent(
        step=first.step,
        epoch=first.epoch,
        phase=first.phase,
        time=max(p.time for p in parts),
        targets={t: np.concatenate([p.targets[t] for p in parts]) for t in first.targets},
        topk={t: np.concatenate([p.topk[t] for p in parts]) for t in first.topk},
        sizes=[size for p in parts for size in p.sizes],
        losses=None if first.losses is None else [v for p in parts for v in p.losses or ()],
        task_losses={t: [v for p in parts for v in p.task_losses[t]] for t in first.task_losses},
        subsets={f: _merge_labels([p.subsets[f] for p in parts]) for f in first.subsets},
        sample_losses=_concat_optional([p.sample_losses for p in parts]),
    )


def _merge_labels(pairs: Sequence[Labels]) -> Labels:
    labels = sorted({label for vocabulary, _ in pairs for label in vocabulary})
    index = {label: i for i, label in enumerate(labels)}
    codes = [np.asarray([index[v] for v in vocab], dtype=np.int64)[c] for vocab, c in pairs]
    return labels, np.concatenate(codes)


def _concat_optional(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    present = [a for a in arrays if a is not None]
    return np.concatenate(present) if present else None


def _merge_scalars(parts: Sequence[ScalarEvent]) -> ScalarEvent:
    values: dict[str, float] = {}
    directions: dict[str, bool] = {}
    for part in parts:
        values.update(part.values)
        directions.update(part.higher_is_better)
    last = parts[-1]
    return ScalarEvent(last.kind, last.step, last.time, values, directions)
