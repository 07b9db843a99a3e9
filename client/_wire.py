"""The wire format shared by the client and the service (defined once, here).

A delivery is ``{"session": str, "seq": int, "events": [event, ...]}``; ``seq`` numbers
the first event and the following events take the next numbers. Bodies are JSON
(``application/json``) or msgpack (``application/msgpack``). Arrays travel as JSON lists
or, in msgpack, as ``{"dtype": "<i8", "shape": [..], "data": <raw little-endian bytes>}``;
both decode to the same numpy arrays, so both encodings produce identical state.

Event kinds (all carry ``kind``):

- ``batch``: ``step, epoch, phase, time, targets{task: int[B]}, topk{task: int[B,k]}``,
  optional ``loss`` and ``task_losses{task: float}`` (batch means), ``subsets{family:
  labels[B]}``, ``sample_losses`` float[B]. A coalesced record carries ``sizes`` (the
  batch sizes of its segments) with ``loss`` and each task loss as one value per segment.
- ``lr``, ``pipeline``, ``gradnorm``, ``custom``: ``step, time, values{name: float}``;
  ``custom`` may add ``higher_is_better{name: bool}``.
- ``end_epoch``: ``phase, epoch, time``.
- ``complete``: ``through_step`` (flush/close: the rank has completed that train step).
- ``checkpoint``: ``id`` (a consistent-cut marker).
- ``batches``: a columnar block: consecutive batch records of one rank, with the scalar
  records logged among them, in one event (one ``seq``). One array a task for all its
  samples, one entry a row in ``step, epoch, phase`` (index into ``phases``), ``time``,
  ``size`` (samples) and the optional ``loss`` and ``task_losses{task}`` (one value a row);
  ``targets{task}`` int[S], ``topk{task}`` int[S,k], optional ``subsets{family:
  {labels, codes[S]}}`` and ``sample_losses`` float[S] cover every row; ``scalars`` lists
  scalar events, each with ``at``: the number of rows logged before it. A block is the same
  to the service as its rows and scalars sent one by one (``BatchBlock.events``); it is
  decoded and checked once, not once a record.

``decode_event`` checks structure, types and finiteness; ``check_batch_against`` checks a
batch against the run's tasks (names, shapes, class ranges). Both raise ``WireError``
naming the field and the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeGuard, cast

import msgpack
import numpy as np

from client._rules import MAX_STEP, NAME_CHARS, NAME_PATTERN, SCALAR_NAME_CHARS, SCALAR_NAME_PATTERN
from client._rules import TaskInfo as TaskInfo  # re-exported: the service and older code import it from here

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
SCALAR_KINDS = ("lr", "pipeline", "gradnorm", "custom")
EVENT_KINDS = ("batch", *SCALAR_KINDS, "end_epoch", "complete", "checkpoint", "batches")
TRAIN_PHASE = "train"
MIN_TOPK = 3
MAX_TOPK = 100
MAX_ARRAY_DIMS = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DIM = 2**31 - 1  # any larger dimension cannot be sent within a body limit
#: estimated bytes a decoded value takes in memory (a pointer and a small object), for the decode bound
DECODED_VALUE_BYTES = 40
MAX_REMEMBERED_NAMES = 100_000
_GOOD_NAMES: set[str] = set()
_INT_TYPE = frozenset({int})
_DTYPES = {d.str: d for d in map(np.dtype, ("<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "<f4", "<f8"))}


#: A subset family's labels: (vocabulary, codes per sample), or (label per sample, empty) before encoding.
Labels: TypeAlias = tuple[Sequence[str], np.ndarray]


class WireError(ValueError):
    """A record or body does not follow the wire format; the message names the field."""


@dataclass
class BatchEvent:
    """One rank's batch for one step and phase (possibly several coalesced segments)."""

    step: int
    epoch: int
    phase: str
    time: float
    targets: dict[str, np.ndarray]
    topk: dict[str, np.ndarray]
    sizes: list[int]
    losses: list[float] | None = None
    task_losses: dict[str, list[float]] = field(default_factory=dict)
    subsets: dict[str, Labels] = field(default_factory=dict)
    sample_losses: np.ndarray | None = None
    kind: str = "batch"

    @property
    def batch_size(self) -> int:
        """Samples in the record."""
        return sum(self.sizes)


@dataclass
class ScalarEvent:
    """Learning rates, pipeline stats, GradNorm state or custom metrics at one step."""

    kind: str
    step: int
    time: float
    values: dict[str, float]
    higher_is_better: dict[str, bool] = field(default_factory=dict)


@dataclass
class EndEpochEvent:
    """The rank has finished ``epoch`` of ``phase``."""

    phase: str
    epoch: int
    time: float
    kind: str = "end_epoch"


@dataclass
class CompleteEvent:
    """The rank has completed every train step up to ``through_step``."""

    through_step: int
    kind: str = "complete"


@dataclass
class CheckpointEvent:
    """A consistent-cut marker in the rank's stream."""

    id: str
    kind: str = "checkpoint"


@dataclass
class BatchBlock:
    """Consecutive batch records of one rank (rows) and the scalars logged among them, as columns.

    Row ``i`` has ``size[i]`` samples, the ``offsets[i]:offsets[i + 1]`` slice of every
    per-sample array. ``scalars`` are ``(at, event)``: ``at`` rows come before the event.
    """

    phases: list[str]
    step: np.ndarray
    epoch: np.ndarray
    phase: np.ndarray
    time: np.ndarray
    size: np.ndarray
    targets: dict[str, np.ndarray]
    topk: dict[str, np.ndarray]
    losses: np.ndarray | None = None
    task_losses: dict[str, np.ndarray] = field(default_factory=dict)
    subsets: dict[str, Labels] = field(default_factory=dict)
    sample_losses: np.ndarray | None = None
    scalars: list[tuple[int, ScalarEvent]] = field(default_factory=list)
    kind: str = "batches"
    _rows: list[BatchEvent] | None = field(default=None, repr=False, compare=False)

    @property
    def rows(self) -> int:
        """Batch rows in the block."""
        return int(self.size.shape[0])

    @property
    def batch_size(self) -> int:
        """Samples in the block."""
        return int(self.size.sum())

    @property
    def records(self) -> int:
        """Records the block stands for (rows and scalars)."""
        return self.rows + len(self.scalars)

    @property
    def offsets(self) -> np.ndarray:
        """Where each row's samples start, and the end: ``rows + 1`` values."""
        return np.concatenate([[0], np.cumsum(self.size)])

    def batches(self) -> list[BatchEvent]:
        """Each row as a ``BatchEvent`` whose arrays are views of the block's (made once)."""
        if self._rows is None:
            self._rows = self._make_rows()
        return self._rows

    def _make_rows(self) -> list[BatchEvent]:
        bounds = self.offsets.tolist()
        steps, epochs, phases = self.step.tolist(), self.epoch.tolist(), self.phase.tolist()
        times, losses = self.time.tolist(), None if self.losses is None else self.losses.tolist()
        task_losses = {t: v.tolist() for t, v in self.task_losses.items()}
        rows = []
        for i in range(self.rows):
            a, b = bounds[i], bounds[i + 1]
            rows.append(BatchEvent(
                step=steps[i], epoch=epochs[i], phase=self.phases[phases[i]], time=times[i],
                targets={t: v[a:b] for t, v in self.targets.items()}, topk={t: v[a:b] for t, v in self.topk.items()},
                sizes=[b - a], losses=None if losses is None else [losses[i]],
                task_losses={t: [v[i]] for t, v in task_losses.items()},
                subsets={f: (labels, codes[a:b]) for f, (labels, codes) in self.subsets.items()},
                sample_losses=None if self.sample_losses is None else self.sample_losses[a:b]))
        return rows

    def events(self) -> list[Event]:
        """The records in the order they were logged: rows and scalars."""
        rows: list[Event] = list(self.batches())
        for at, scalar in reversed(self.scalars):  # from the back: earlier positions stay valid
            rows.insert(at, scalar)
        return rows


Event: TypeAlias = BatchEvent | ScalarEvent | EndEpochEvent | CompleteEvent | CheckpointEvent | BatchBlock


def logical_events(events: Sequence[Event]) -> list[Event]:
    """``events`` with every block replaced by its records, in logging order."""
    if not any(type(e) is BatchBlock for e in events):
        return list(events)
    out: list[Event] = []
    for event in events:
        out.extend(event.events() if isinstance(event, BatchBlock) else (event,))
    return out


def record_count(events: Sequence[Event]) -> int:
    """Records ``events`` stand for (a block counts its rows and scalars)."""
    return sum(e.records if isinstance(e, BatchBlock) else 1 for e in events)


# ---------------------------------------------------------------- arrays and bodies


def encode_array(array: np.ndarray, binary: bool) -> Any:
    """Encode an array as a JSON list or a msgpack raw little-endian buffer."""
    if not binary:
        return array.tolist()
    le = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": le.dtype.str, "shape": list(le.shape), "data": np.ascontiguousarray(le).tobytes()}


def decode_array(obj: Any, name: str, kind: str) -> np.ndarray:
    """Decode an array field; ``kind`` is ``"int"`` or ``"float"``."""
    if type(obj) is dict or isinstance(obj, Mapping):  # msgpack gives dicts: skip the ABC check
        array = _decode_raw(obj, name)
    elif isinstance(obj, list):
        array = _decode_list(obj, name, kind)
    else:
        raise WireError(f"{name}: expected an array, got {type(obj).__name__}")
    return _check_kind(array, name, kind)


def _decode_raw(obj: Mapping[str, Any], name: str) -> np.ndarray:
    try:
        raw_dtype, raw_shape, data = obj["dtype"], obj["shape"], obj["data"]
    except (KeyError, TypeError) as exc:
        raise WireError(f"{name}: a binary array needs dtype, shape and data ({exc})") from exc
    dtype = _DTYPES.get(raw_dtype) if type(raw_dtype) is str else None
    if dtype is None:
        dtype = _parse_dtype(raw_dtype, name)
    if type(raw_shape) is not list or len(raw_shape) > MAX_ARRAY_DIMS or not _INT_TYPE.issuperset(map(type, raw_shape)):
        raise WireError(f"{name}: shape must be at most {MAX_ARRAY_DIMS} integers, got {raw_shape!r}"[:300])
    shape = tuple(raw_shape)
    if not all(0 <= d <= MAX_DIM for d in shape):  # checked before any product or allocation
        raise WireError(f"{name}: shape dimensions must lie in [0, {MAX_DIM}], got {list(shape)}"[:300])
    if type(data) is not bytes and not isinstance(data, bytes | bytearray):
        raise WireError(f"{name}: binary array data must be bytes, got {type(data).__name__}")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise WireError(f"{name}: {len(data)} bytes do not fill shape {list(shape)} of {dtype.str}")
    return np.frombuffer(data if type(data) is bytes else bytes(data), dtype=dtype).reshape(shape)


def _parse_dtype(raw: Any, name: str) -> np.dtype[Any]:
    try:
        dtype = np.dtype(str(raw))
    except (TypeError, ValueError) as exc:
        raise WireError(f"{name}: a binary array needs dtype, shape and data ({exc})"[:300]) from exc
    if dtype.kind not in "iuf":
        raise WireError(f"{name}: unsupported binary array dtype {dtype.str!r}")
    return dtype


def _decode_list(obj: list[Any], name: str, kind: str) -> np.ndarray:
    values = _flat(obj, name)
    if any(isinstance(v, bool) for v in values):
        raise WireError(f"{name}: booleans are not numbers")
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise WireError(f"{name}: class indices must be integers")
    if kind == "float" and not all(isinstance(v, int | float) for v in values):
        raise WireError(f"{name}: expected numbers")
    if kind == "float" and any(type(v) is int and not INT64_MIN <= v <= INT64_MAX for v in values):
        raise WireError(f"{name}: an integer outside int64")
    try:
        return np.asarray(obj, dtype=np.int64 if kind == "int" else np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"{name}: not a rectangular array of {kind}s ({exc})"[:300]) from exc


def _flat(obj: list[Any], name: str) -> list[Any]:
    """The leaves of nested lists, refusing more than MAX_ARRAY_DIMS levels (no recursion)."""
    level: list[Any] = [obj]
    leaves: list[Any] = []
    for _ in range(MAX_ARRAY_DIMS):
        lists = [v for v in level if isinstance(v, list)]
        leaves.extend(v for v in level if not isinstance(v, list))
        level = [item for sub in lists for item in sub]
        if not level:
            return leaves
    raise WireError(f"{name}: arrays are nested at most {MAX_ARRAY_DIMS} levels deep")


def _check_kind(array: np.ndarray, name: str, kind: str) -> np.ndarray:
    if kind == "int":
        if array.dtype.kind not in "iu":
            raise WireError(f"{name}: expected integer class indices, got dtype {array.dtype}")
        if array.dtype.kind == "i" or array.dtype.itemsize < 8:  # fits int64 as it is: no copy
            return array
        if array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise WireError(f"{name}: class index {int(array.max())} out of range")
        return array.astype(np.int64)
    if array.dtype.kind not in "iuf":
        raise WireError(f"{name}: expected numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise WireError(f"{name}: values must be finite (found NaN or inf)")
    return array


def pack_body(body: Mapping[str, Any], binary: bool) -> bytes:
    """Serialise a delivery body (events already encoded with ``encode_event``)."""
    if binary:
        return cast(bytes, msgpack.packb(body, use_bin_type=True))
    import json

    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def unpack_body(data: bytes, content_type: str, max_decoded_bytes: int | None = None) -> Any:
    """Parse a body by content type; raises ``WireError`` on malformed input.

    With ``max_decoded_bytes`` the decoded objects are bounded before they are built: JSON
    by counting its values in the raw bytes; msgpack by the length of any one container and
    the running count of decoded elements (``DECODED_VALUE_BYTES`` each). Raw array data
    stays one bytes object, so a binary body decodes to about its own size.
    """
    try:
        if content_type.startswith(MSGPACK_TYPE):
            return _unpack_msgpack(data, max_decoded_bytes)
        import json

        if max_decoded_bytes is not None:
            check_decoded_size(json_values(data), max_decoded_bytes)
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        if isinstance(exc, DecodedTooLarge):
            raise
        raise WireError(f"body: malformed {content_type or 'body'} ({exc})"[:500]) from exc


class DecodedTooLarge(WireError):
    """Decoding the body would take more memory than allowed (``max_decoded_bytes``)."""


def json_values(data: bytes) -> int:
    """An upper bound of the values in a JSON text (each is followed by ``,`` or opens a container)."""
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


def check_decoded_size(values: int, max_decoded_bytes: int) -> None:
    """Refuse a body whose ``values`` would take more than ``max_decoded_bytes`` once decoded."""
    if values * DECODED_VALUE_BYTES > max_decoded_bytes:
        raise DecodedTooLarge(
            f"body: about {values} values would take more than {max_decoded_bytes} bytes decoded "
            "(max_decoded_bytes); send array data as binary (msgpack) or in smaller deliveries")


def _unpack_msgpack(data: bytes, max_decoded_bytes: int | None) -> Any:
    if max_decoded_bytes is None:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    longest = max(1, max_decoded_bytes // DECODED_VALUE_BYTES)
    counted = [0]

    def count(container: Any) -> Any:
        counted[0] += len(container)
        check_decoded_size(counted[0], max_decoded_bytes)
        return container

    try:
        # msgpack allocates a container at its declared length: bound that before the hooks can count
        return msgpack.unpackb(data, raw=False, strict_map_key=True, list_hook=count, object_hook=count,
                               max_array_len=longest, max_map_len=longest)
    except ValueError as exc:
        if "exceeds max_" not in str(exc):
            raise
        raise DecodedTooLarge(f"body: a container longer than {longest} elements would take more than "
                              f"{max_decoded_bytes} bytes decoded (max_decoded_bytes)") from exc


def _reject_constant(token: str) -> Any:
    raise WireError(f"body: {token} is not a finite number")


# ---------------------------------------------------------------- encoding events


def encode_event(event: Event, binary: bool, index_types: Mapping[str, np.dtype[Any]] | None = None) -> dict[str, Any]:
    """Turn a decoded event back into its wire form.

    Binary bodies carry class indices as int32, or as ``index_types[task]`` when given
    (``index_type(num_classes)``: one or two bytes for most tasks).
    """
    if isinstance(event, BatchEvent):
        return _encode_batch(event, binary, index_types or {})
    if isinstance(event, BatchBlock):
        return _encode_block(event, binary, index_types or {})
    out = {k: v for k, v in vars(event).items() if not (k == "higher_is_better" and not v)}
    return out


def _encode_batch(event: BatchEvent, binary: bool, index_types: Mapping[str, np.dtype[Any]]) -> dict[str, Any]:
    single = len(event.sizes) == 1
    out: dict[str, Any] = {
        "kind": "batch",
        "step": event.step,
        "epoch": event.epoch,
        "phase": event.phase,
        "time": event.time,
        "targets": {t: encode_array(_indices(a, binary, index_types.get(t)), binary) for t, a in event.targets.items()},
        "topk": {t: encode_array(_indices(a, binary, index_types.get(t)), binary) for t, a in event.topk.items()},
    }
    if not single:
        out["sizes"] = list(event.sizes)
    if event.losses is not None:
        out["loss"] = event.losses[0] if single else list(event.losses)
    if event.task_losses:
        out["task_losses"] = {t: v[0] if single else list(v) for t, v in event.task_losses.items()}
    if event.subsets:
        out["subsets"] = {f: encode_subset(lab, codes, binary) for f, (lab, codes) in event.subsets.items()}
    if event.sample_losses is not None:
        out["sample_losses"] = encode_array(event.sample_losses, binary)
    return out


def block_key(batch: BatchEvent) -> tuple[Any, ...]:
    """What batches must share to go in one block: optional fields, families, k per task."""
    return (batch.losses is None, batch.sample_losses is None, tuple(sorted(batch.task_losses)),
            tuple(sorted(batch.subsets)), tuple(sorted((t, a.shape[1]) for t, a in batch.topk.items())))


def block_spans(events: Sequence[Any], key: Callable[[Any], Hashable | None] | None = None) -> list[tuple[int, int]]:
    """Where ``events`` (in order) can go in blocks: ``[start, end)`` spans that cover them all,
    each one event or a block's records (batches sharing ``block_key`` and the scalars among
    them, at least two batches). Control records (end_epoch, complete, checkpoint) end a block.

    ``key`` gives a batch's ``block_key``, ``SCALAR`` for a scalar record and None for a
    control record (default: for decoded ``Event``s).
    """
    key = key or event_block_key
    spans: list[tuple[int, int]] = []
    start, current, batches, last = 0, None, 0, 0

    def close(end: int) -> None:
        nonlocal start
        if batches >= 2:
            spans.append((start, end))
        else:
            spans.extend((i, i + 1) for i in range(start, end))
        start = end

    for i, event in enumerate(events):
        k = key(event)
        if k is not None and k != SCALAR:
            if current is not None and k != current:
                close(last)  # the scalars since the last batch open the next block (they are logged before it)
                batches = 0
            current, batches, last = k, batches + 1, i + 1
        elif k is None:
            close(i)
            spans.append((i, i + 1))
            start, current, batches = i + 1, None, 0
    close(len(events))
    return spans


SCALAR = "scalar"


def event_block_key(event: Event) -> Hashable | None:
    """``block_key`` of a batch, ``SCALAR`` for a scalar record, None for any other event."""
    if isinstance(event, BatchEvent):
        return block_key(event)
    return SCALAR if isinstance(event, ScalarEvent) else None


def block_of(records: Sequence[BatchEvent | ScalarEvent]) -> BatchBlock:
    """The block of batch and scalar records (logging order); the batches must share ``block_key``
    and their labels be dictionary-encoded. A coalesced batch gives a row per segment."""
    batches = [r for r in records if isinstance(r, BatchEvent)]
    if not batches:
        raise ValueError("a block needs at least one batch")
    key = block_key(batches[0])
    if any(block_key(b) != key for b in batches):
        raise ValueError("the batches of a block must share their optional fields, families and k")
    scalars, rows = [], 0
    for record in records:
        if isinstance(record, ScalarEvent):
            scalars.append((rows, record))
        else:
            rows += len(record.sizes)
    phases = list(dict.fromkeys(b.phase for b in batches))
    where = {p: i for i, p in enumerate(phases)}

    def per_row(value: Any) -> list[Any]:
        return [value(b) for b in batches for _ in b.sizes]

    first = batches[0]
    return BatchBlock(
        phases=phases,
        step=np.array(per_row(lambda b: b.step), dtype=np.int64),
        epoch=np.array(per_row(lambda b: b.epoch), dtype=np.int64),
        phase=np.array(per_row(lambda b: where[b.phase]), dtype=np.int64),
        time=np.array(per_row(lambda b: b.time), dtype=np.float64),
        size=np.array([n for b in batches for n in b.sizes], dtype=np.int64),
        targets={t: _concat([b.targets[t] for b in batches]) for t in first.targets},
        topk={t: _concat([b.topk[t] for b in batches]) for t in first.topk},
        losses=None if first.losses is None else np.array([v for b in batches for v in b.losses or ()]),
        task_losses={t: np.array([v for b in batches for v in b.task_losses[t]]) for t in first.task_losses},
        subsets={f: merge_labels([b.subsets[f] for b in batches]) for f in first.subsets},
        sample_losses=None if first.sample_losses is None else _concat([b.sample_losses for b in batches
                                                                          if b.sample_losses is not None]),
        scalars=scalars,
    )


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def merge_labels(pairs: Sequence[Labels]) -> Labels:
    """Dictionary-encoded labels of several batches as one: the union vocabulary, codes remapped
    (concatenated as they are when every batch has the same vocabulary)."""
    first = pairs[0][0]
    if all(v is first or v == first for v, _ in pairs):
        return first, _concat([c for _, c in pairs])
    labels = sorted({label for vocabulary, _ in pairs for label in vocabulary})
    index = {label: i for i, label in enumerate(labels)}
    codes = [np.asarray([index[v] for v in vocab], dtype=np.int64)[c] for vocab, c in pairs]
    return labels, np.concatenate(codes)


def _encode_block(block: BatchBlock, binary: bool, index_types: Mapping[str, np.dtype[Any]]) -> dict[str, Any]:
    small = np.uint8 if len(block.phases) <= 256 else np.int64
    out: dict[str, Any] = {
        "kind": "batches", "phases": list(block.phases),
        "step": encode_array(block.step, binary), "epoch": encode_array(block.epoch, binary),
        "phase": encode_array(block.phase.astype(small), binary), "time": encode_array(block.time, binary),
        "size": encode_array(block.size, binary),
        "targets": {t: encode_array(_indices(a, binary, index_types.get(t)), binary) for t, a in block.targets.items()},
        "topk": {t: encode_array(_indices(a, binary, index_types.get(t)), binary) for t, a in block.topk.items()},
    }
    if block.losses is not None:
        out["loss"] = encode_array(block.losses, binary)
    if block.task_losses:
        out["task_losses"] = {t: encode_array(v, binary) for t, v in block.task_losses.items()}
    if block.subsets:
        out["subsets"] = {f: encode_subset(lab, codes, True) if binary else
                          {"labels": list(lab), "codes": codes.tolist()} for f, (lab, codes) in block.subsets.items()}
    if block.sample_losses is not None:
        out["sample_losses"] = encode_array(block.sample_losses, binary)
    if block.scalars:
        out["scalars"] = [{**encode_event(event, binary), "at": at} for at, event in block.scalars]
    return out


def index_type(num_classes: int) -> np.dtype[Any]:
    """The narrowest little-endian dtype that holds every class index of a task."""
    return np.dtype("<u1" if num_classes <= 2**8 else "<u2" if num_classes <= 2**16 else "<i4")


def _indices(array: np.ndarray, binary: bool, dtype: np.dtype[Any] | None) -> np.ndarray:
    """Binary bodies: indices as ``dtype`` (checked against the task's classes) or int32 (< 2**31)."""
    if not binary:
        return array
    return array.astype(dtype or np.int32, copy=False) if dtype or array.dtype.itemsize > 4 else array


def encode_subset(labels: Sequence[str], codes: np.ndarray, binary: bool) -> Any:
    """A family's labels on the wire: vocabulary and one code a sample (binary), or the labels (JSON)."""
    if binary:
        small = codes.dtype == np.uint8 or (len(labels) <= 256 and codes.dtype.kind in "iu")
        return {"labels": labels, "codes": encode_array(codes.astype(np.uint8 if small else np.int32), True)}
    return [labels[c] for c in codes.tolist()]


# ---------------------------------------------------------------- decoding events


def decode_events(objs: Any) -> list[Event]:
    """Decode the ``events`` list of a delivery."""
    if not isinstance(objs, list):
        raise WireError(f"events: expected a list, got {type(objs).__name__}")
    return [decode_event(obj, f"events[{i}]") for i, obj in enumerate(objs)]


def decode_event(obj: Any, where: str = "event") -> Event:
    """Decode and check one event (structure, types, finiteness)."""
    if not isinstance(obj, Mapping):
        raise WireError(f"{where}: expected an object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind == "batch":
        return _decode_batch(obj, where)
    if kind in SCALAR_KINDS:
        return _decode_scalar(obj, where, str(kind))
    if kind == "end_epoch":
        return EndEpochEvent(_name(obj, "phase", where), _int(obj, "epoch", where), _time(obj, where))
    if kind == "complete":
        return CompleteEvent(_int(obj, "through_step", where))
    if kind == "checkpoint":
        return CheckpointEvent(_name(obj, "id", where))
    if kind == "batches":
        return _decode_block(obj, where)
    raise WireError(f"{where}.kind: unknown event kind {kind!r} (expected one of {', '.join(EVENT_KINDS)})")


def _decode_batch(obj: Mapping[str, Any], where: str) -> BatchEvent:
    targets = _array_map(obj, "targets", where, "int")
    topk = _array_map(obj, "topk", where, "int")
    size = _batch_size(targets, where)
    sizes = _sizes(obj, where, size)
    return BatchEvent(
        step=_int(obj, "step", where),
        epoch=_int(obj, "epoch", where),
        phase=_name(obj, "phase", where),
        time=_time(obj, where),
        targets=targets,
        topk=topk,
        sizes=sizes,
        losses=_losses(obj.get("loss"), f"{where}.loss", len(sizes)),
        task_losses=_task_losses(obj, where, len(sizes)),
        subsets=_subsets(obj, where, size),
        sample_losses=_sample_losses(obj, where, size),
    )


def _decode_block(obj: Mapping[str, Any], where: str) -> BatchBlock:
    phases = obj.get("phases")
    if not isinstance(phases, list) or not phases:
        raise WireError(f"{where}.phases: expected a non-empty list of phase names")
    phases = [_check_name(p, f"{where}.phases") for p in phases]
    step = _row_ints(obj, "step", where)
    rows = step.shape[0]
    if rows == 0:
        raise WireError(f"{where}.step: a block needs at least one row")
    epoch = _row_ints(obj, "epoch", where, rows)
    phase = _row_array(obj, "phase", where, "int", rows)
    time = _row_array(obj, "time", where, "float", rows)
    size = _row_array(obj, "size", where, "int", rows)
    if phase.min() < 0 or phase.max() >= len(phases):
        raise WireError(f"{where}.phase: phase indices must index the {len(phases)} phases")
    if time.min() < 0:
        raise WireError(f"{where}.time: expected wall-clock times, got {float(time.min())!r}")
    if size.min() <= 0:
        raise WireError(f"{where}.size: every row needs at least one sample, got {int(size.min())}")
    targets = _array_map(obj, "targets", where, "int")
    topk = _array_map(obj, "topk", where, "int")
    samples = _batch_size(targets, where)
    if samples != int(size.sum()):
        raise WireError(f"{where}.size: rows add up to {int(size.sum())} samples but the targets have {samples}")
    losses = None if obj.get("loss") is None else _row_array(obj, "loss", where, "float", rows)
    task_losses = obj.get("task_losses") or {}
    if not isinstance(task_losses, Mapping):
        raise WireError(f"{where}.task_losses: expected an object, got {type(task_losses).__name__}")
    named = f"{where}.task_losses"
    per_task = {_check_name(t, named): _row_array(task_losses, t, named, "float", rows) for t in task_losses}
    return BatchBlock(phases=phases, step=step, epoch=epoch, phase=phase, time=time, size=size, targets=targets,
                      topk=topk, losses=losses, task_losses=per_task, subsets=_subsets(obj, where, samples),
                      sample_losses=_sample_losses(obj, where, samples), scalars=_block_scalars(obj, where, rows))


def _row_ints(obj: Mapping[str, Any], key: str, where: str, rows: int | None = None) -> np.ndarray:
    """Steps or epochs, one a row (``rows`` of them when given)."""
    array = decode_array(obj.get(key), f"{where}.{key}", "int")
    if array.ndim != 1 or (rows is not None and array.shape[0] != rows):
        wanted = "one value a row" if rows is None else f"{rows} values (one a row)"
        raise WireError(f"{where}.{key}: expected {wanted}, got shape {list(array.shape)}")
    if array.size and (array.min() < 0 or array.max() > MAX_STEP):
        raise WireError(f"{where}.{key}: expected non-negative integers up to {MAX_STEP}")
    return array.astype(np.int64, copy=False)


def _row_array(obj: Mapping[str, Any], key: str, where: str, kind: str, rows: int) -> np.ndarray:
    """One number a row of ``kind`` (``int`` or ``float``)."""
    array = decode_array(obj.get(key), f"{where}.{key}", kind)
    if array.shape != (rows,):
        raise WireError(f"{where}.{key}: expected {rows} values (one a row), got shape {list(array.shape)}")
    return array.astype(np.int64 if kind == "int" else np.float64, copy=False)


def _block_scalars(obj: Mapping[str, Any], where: str, rows: int) -> list[tuple[int, ScalarEvent]]:
    raw = obj.get("scalars") or []
    if not isinstance(raw, list):
        raise WireError(f"{where}.scalars: expected a list, got {type(raw).__name__}")
    out: list[tuple[int, ScalarEvent]] = []
    for i, item in enumerate(raw):
        name = f"{where}.scalars[{i}]"
        if not isinstance(item, Mapping) or item.get("kind") not in SCALAR_KINDS:
            raise WireError(f"{name}: expected a scalar record ({', '.join(SCALAR_KINDS)})")
        at = item.get("at")
        if not _is_int(at) or not (out[-1][0] if out else 0) <= at <= rows:
            raise WireError(f"{name}.at: expected a row position in [{out[-1][0] if out else 0}, {rows}], got {at!r}")
        out.append((at, _decode_scalar(item, name, str(item["kind"]))))
    return out


def _array_map(obj: Mapping[str, Any], key: str, where: str, kind: str) -> dict[str, np.ndarray]:
    raw = obj.get(key)
    if not isinstance(raw, Mapping) or not raw:
        raise WireError(f"{where}.{key}: expected a non-empty object of task arrays")
    return {_check_name(t, f"{where}.{key}"): decode_array(v, f"{where}.{key}.{t}", kind) for t, v in raw.items()}


def _batch_size(targets: dict[str, np.ndarray], where: str) -> int:
    sizes = {t: a.shape[0] if a.ndim == 1 else -1 for t, a in targets.items()}
    bad = {t: s for t, s in sizes.items() if s < 0}
    if bad:
        raise WireError(f"{where}.targets: each target must be a 1-d array (bad: {sorted(bad)})")
    if len(set(sizes.values())) != 1:
        raise WireError(f"{where}.targets: tasks disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise WireError(f"{where}.targets: a batch needs at least one sample")
    return size


def _sizes(obj: Mapping[str, Any], where: str, size: int) -> list[int]:
    raw = obj.get("sizes")
    if raw is None:
        return [size]
    if not isinstance(raw, list) or not raw or not all(_is_int(v) and v > 0 for v in raw):
        raise WireError(f"{where}.sizes: expected a list of positive integers, got {raw!r}")
    if sum(raw) != size:
        raise WireError(f"{where}.sizes: segments sum to {sum(raw)} but the batch has {size} samples")
    return list(raw)


def _losses(raw: Any, name: str, segments: int) -> list[float] | None:
    if raw is None:
        return None
    values = raw if isinstance(raw, list) else [raw]
    if len(values) != segments:
        raise WireError(f"{name}: expected {segments} value(s), got {len(values)}")
    return [_finite(v, name) for v in values]


def _task_losses(obj: Mapping[str, Any], where: str, segments: int) -> dict[str, list[float]]:
    raw = obj.get("task_losses") or {}
    if not isinstance(raw, Mapping):
        raise WireError(f"{where}.task_losses: expected an object, got {type(raw).__name__}")
    out = {}
    for task, value in raw.items():
        name = f"{where}.task_losses.{_check_name(task, f'{where}.task_losses')}"
        losses = _losses(value, name, segments)
        if losses is None:
            raise WireError(f"{name}: expected a number, got null")
        out[task] = losses
    return out


def _subsets(obj: Mapping[str, Any], where: str, size: int) -> dict[str, Labels]:
    raw = obj.get("subsets") or {}
    if not isinstance(raw, Mapping):
        raise WireError(f"{where}.subsets: expected an object, got {type(raw).__name__}")
    out = {}
    for family, value in raw.items():
        name = f"{where}.subsets.{_check_name(family, f'{where}.subsets')}"
        labels, codes = _labels(value, name)
        if codes.shape != (size,):
            raise WireError(f"{name}: {codes.shape[0]} labels for a batch of {size}")
        out[family] = (labels, codes)
    return out


def _labels(value: Any, name: str) -> Labels:
    if isinstance(value, list):
        labels = sorted({_check_name(v, name) for v in value})
        index = {label: i for i, label in enumerate(labels)}
        return labels, np.fromiter((index[v] for v in value), dtype=np.int64, count=len(value))
    if isinstance(value, Mapping) and isinstance(value.get("labels"), list):
        labels = [_check_name(v, name) for v in value["labels"]]
        codes = decode_array(value.get("codes"), f"{name}.codes", "int")
        negative = codes.dtype.kind == "i" and codes.size and codes.min() < 0  # unsigned codes never are
        if codes.ndim != 1 or negative or (codes.size and codes.max() >= len(labels)):
            raise WireError(f"{name}.codes: codes must index the {len(labels)} labels")
        return labels, codes
    raise WireError(f"{name}: expected a list of labels, got {type(value).__name__}")


def _sample_losses(obj: Mapping[str, Any], where: str, size: int) -> np.ndarray | None:
    raw = obj.get("sample_losses")
    if raw is None:
        return None
    array = decode_array(raw, f"{where}.sample_losses", "float")
    if array.shape != (size,):
        raise WireError(f"{where}.sample_losses: shape {list(array.shape)} for a batch of {size}")
    return array


def _decode_scalar(obj: Mapping[str, Any], where: str, kind: str) -> ScalarEvent:
    raw = obj.get("values")
    if not isinstance(raw, Mapping) or not raw:
        raise WireError(f"{where}.values: expected a non-empty object of numbers")
    values = {_scalar_name(k, where): _finite(v, f"{where}.values.{k}") for k, v in raw.items()}
    hib = obj.get("higher_is_better") or {}
    if not isinstance(hib, Mapping) or not all(isinstance(v, bool) for v in hib.values()):
        raise WireError(f"{where}.higher_is_better: expected an object of booleans")
    if hib and kind != "custom":
        raise WireError(f"{where}.higher_is_better: only custom metrics take it, not {kind}")
    unknown = sorted(set(hib) - set(values))
    if unknown:
        raise WireError(f"{where}.higher_is_better: names without a value: {unknown}")
    return ScalarEvent(kind, _int(obj, "step", where), _time(obj, where), values, dict(hib))


# ---------------------------------------------------------------- field checks


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not _is_int(value) or not 0 <= value <= MAX_STEP:
        raise WireError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
    return int(value)


def _finite(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise WireError(f"{name}: expected a finite number, got {_short(value)}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:  # also what float() would overflow on
        raise WireError(f"{name}: expected a finite number, got {_short(value)} (outside int64)")
    number = float(value)
    if not math.isfinite(number):
        raise WireError(f"{name}: expected a finite number, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {len(str(value))} digits"
    return repr(value)[:80]


def _time(obj: Mapping[str, Any], where: str) -> float:
    value = _finite(obj.get("time"), f"{where}.time")
    if value < 0:
        raise WireError(f"{where}.time: expected a wall-clock time, got {value!r}")
    return value


def _check_name(value: Any, where: str) -> str:
    if type(value) is str and value in _GOOD_NAMES:  # names repeat in every record: match each once
        return value
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise WireError(f"{where}: invalid name {value!r} (allowed: {NAME_CHARS})")
    if len(_GOOD_NAMES) < MAX_REMEMBERED_NAMES:
        _GOOD_NAMES.add(value)
    return value


def _name(obj: Mapping[str, Any], key: str, where: str) -> str:
    return _check_name(obj.get(key), f"{where}.{key}")


def _scalar_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SCALAR_NAME_PATTERN.match(value):
        raise WireError(f"{where}.values: invalid name {value!r} (allowed: {SCALAR_NAME_CHARS})")
    return value


# ---------------------------------------------------------------- checks against a run


def check_batch_against(batch: BatchEvent, tasks: Sequence[TaskInfo], where: str = "batch") -> None:
    """Check a batch against the run's tasks: names, shapes, k and class ranges."""
    check_batches_against([batch], tasks, [where])


def check_batches_against(batches: Sequence[BatchEvent | BatchBlock], tasks: Sequence[TaskInfo],
                          wheres: Sequence[str]) -> None:
    """``check_batch_against`` for many batches (blocks too: a block is checked as one batch of all its
    samples), the class ranges checked task by task for all at once."""
    names = {t.name for t in tasks}
    for batch, where in zip(batches, wheres, strict=True):
        _check_names(batch, names, where)
        for task in tasks:
            _check_task_shape(batch, task, where)
    for task in tasks if batches else ():
        arrays = [a.reshape(-1) for b in batches for a in (b.targets[task.name], b.topk[task.name])]
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if joined.size and (joined.min() < 0 or joined.max() >= task.num_classes):
            for batch, where in zip(batches, wheres, strict=True):  # find the first bad one, to name it
                _check_task_range(batch, task, where)


def _check_names(batch: BatchEvent | BatchBlock, names: set[str], where: str) -> None:
    for key in ("targets", "topk"):
        got = getattr(batch, key)
        if got.keys() != names:
            missing, extra = sorted(names - set(got)), sorted(set(got) - names)
            raise WireError(f"{where}.{key}: tasks do not match the run (missing {missing}, unknown {extra})")
    unknown = sorted(set(batch.task_losses) - names)
    if unknown:
        raise WireError(f"{where}.task_losses: unknown task(s) {unknown}")


def _check_task_shape(batch: BatchEvent | BatchBlock, task: TaskInfo, where: str) -> None:
    size = batch.batch_size
    topk = batch.topk[task.name]
    min_k = min(MIN_TOPK, task.num_classes)  # a task with fewer classes than 3 sends them all
    if topk.ndim != 2 or topk.shape[0] != size or not min_k <= topk.shape[1] <= MAX_TOPK:
        raise WireError(
            f"{where}.topk.{task.name}: expected shape [{size}, k] with {min_k} <= k <= {MAX_TOPK}, "
            f"got {list(topk.shape)}"
        )


def _check_task_range(batch: BatchEvent | BatchBlock, task: TaskInfo, where: str) -> None:
    for key, array in (("targets", batch.targets[task.name]), ("topk", batch.topk[task.name])):
        if array.size and (array.min() < 0 or array.max() >= task.num_classes):
            bad = array[(array < 0) | (array >= task.num_classes)].flat[0]
            raise WireError(
                f"{where}.{key}.{task.name}: class index {int(bad)} outside [0, {task.num_classes})"
            )
