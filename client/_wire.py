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

``decode_event`` checks structure, types and finiteness; ``check_batch_against`` checks a
batch against the run's tasks (names, shapes, class ranges). Both raise ``WireError``
naming the field and the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeGuard, cast

import msgpack
import numpy as np

from client._rules import MAX_STEP, NAME_CHARS, NAME_PATTERN, SCALAR_NAME_CHARS, SCALAR_NAME_PATTERN
from client._rules import TaskInfo as TaskInfo  # re-exported: the service and older code import it from here

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
SCALAR_KINDS = ("lr", "pipeline", "gradnorm", "custom")
EVENT_KINDS = ("batch", *SCALAR_KINDS, "end_epoch", "complete", "checkpoint")
TRAIN_PHASE = "train"
MIN_TOPK = 3
MAX_TOPK = 100
MAX_ARRAY_DIMS = 4
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


Event: TypeAlias = BatchEvent | ScalarEvent | EndEpochEvent | CompleteEvent | CheckpointEvent


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
    if type(data) is not bytes and not isinstance(data, bytes | bytearray):
        raise WireError(f"{name}: binary array data must be bytes, got {type(data).__name__}")
    if min(shape, default=0) < 0 or math.prod(shape) * dtype.itemsize != len(data):
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


def unpack_body(data: bytes, content_type: str) -> Any:
    """Parse a body by content type; raises ``WireError`` on malformed input."""
    try:
        if content_type.startswith(MSGPACK_TYPE):
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        import json

        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise WireError(f"body: malformed {content_type or 'body'} ({exc})"[:500]) from exc


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
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise WireError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


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


def check_batches_against(batches: Sequence[BatchEvent], tasks: Sequence[TaskInfo], wheres: Sequence[str]) -> None:
    """``check_batch_against`` for many batches, the class ranges checked task by task for all at once."""
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


def _check_names(batch: BatchEvent, names: set[str], where: str) -> None:
    for key in ("targets", "topk"):
        got = getattr(batch, key)
        if got.keys() != names:
            missing, extra = sorted(names - set(got)), sorted(set(got) - names)
            raise WireError(f"{where}.{key}: tasks do not match the run (missing {missing}, unknown {extra})")
    unknown = sorted(set(batch.task_losses) - names)
    if unknown:
        raise WireError(f"{where}.task_losses: unknown task(s) {unknown}")


def _check_task_shape(batch: BatchEvent, task: TaskInfo, where: str) -> None:
    size = batch.batch_size
    topk = batch.topk[task.name]
    min_k = min(MIN_TOPK, task.num_classes)  # a task with fewer classes than 3 sends them all
    if topk.ndim != 2 or topk.shape[0] != size or not min_k <= topk.shape[1] <= MAX_TOPK:
        raise WireError(
            f"{where}.topk.{task.name}: expected shape [{size}, k] with {min_k} <= k <= {MAX_TOPK}, "
            f"got {list(topk.shape)}"
        )


def _check_task_range(batch: BatchEvent, task: TaskInfo, where: str) -> None:
    for key, array in (("targets", batch.targets[task.name]), ("topk", batch.topk[task.name])):
        if array.size and (array.min() < 0 or array.max() >= task.num_classes):
            bad = array[(array < 0) | (array >= task.num_classes)].flat[0]
            raise WireError(
                f"{where}.{key}.{task.name}: class index {int(bad)} outside [0, {task.num_classes})"
            )
