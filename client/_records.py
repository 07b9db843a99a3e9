"""Checking ``log_*()`` arguments and building wire records from them.

Every check the service would make on a record is made here first, so a record the
client queues is never refused later (which would cost the whole delivery). Errors name
the argument and the bad value; value errors subclass ValueError, type errors TypeError.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from client import _rules as rules
from client._arrays import class_indices, finite_floats, is_tensor, to_numpy, topk_from_logits
from client._errors import InvalidRecord, InvalidType, InvalidValue
from client._rules import MAX_STEP
from client._wire import (
    BatchEvent,
    Labels,
    ScalarEvent,
    TaskInfo,
    WireError,
    check_batch_against,
)


def check_int(value: Any, name: str) -> int:
    """A non-negative integer (Python, numpy or 0-d tensor), else InvalidType/InvalidRecord."""
    if isinstance(value, bool):
        raise InvalidType(f"{name}: expected an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError as exc:
        raise InvalidType(
            f"{name}: expected an integer, got {type(value).__name__} {value!r}"
        ) from exc
    if not 0 <= number <= MAX_STEP:
        raise InvalidRecord(f"{name}: expected an integer in [0, {MAX_STEP}], got {number}")
    return number


def check_name(value: Any, name: str, error: type[InvalidValue] = InvalidRecord) -> str:
    """A name as the wire allows it (tasks, phases, families, labels, checkpoint ids)."""
    return rules.check_name(value, name, error)


def check_number(value: Any, name: str) -> float:
    """A finite number (Python, numpy or 0-d tensor)."""
    if isinstance(value, bool | str | bytes):
        raise InvalidType(f"{name}: expected a number, got {value!r}")
    if is_tensor(value):
        value = value.detach()  # a loss straight after backward() still requires grad
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidType(
            f"{name}: expected a number, got {type(value).__name__} {value!r}"
        ) from exc
    if not math.isfinite(number):
        raise InvalidRecord(f"{name}: expected a finite number, got {number}")
    return number


def _mapping(value: Any, name: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise InvalidType(f"{name}: expected a dict, got {type(value).__name__}")
    return value


def _check_tasks(
    given: Mapping[Any, Any], tasks: Sequence[TaskInfo], name: str, exact: bool
) -> None:
    names = [t.name for t in tasks]
    unknown = sorted(str(t) for t in set(given) - set(names))
    missing = sorted(set(names) - set(given)) if exact else []
    problems = [
        f"{what} task(s) {found}"
        for what, found in (("unknown", unknown), ("missing", missing))
        if found
    ]
    if problems:
        raise InvalidRecord(f"{name}: {', '.join(problems)} (run tasks: {names})")


def build_batch(
    tasks: Sequence[TaskInfo],
    *,
    step: int,
    epoch: int,
    phase: str,
    time: float,
    loss: Any,
    task_losses: Any,
    targets: Any,
    topk: Any,
    logits: Any,
    subsets: Any,
    sample_losses: Any,
) -> BatchEvent:
    """Check ``log_batch`` arguments and build the batch record."""
    target_arrays = _targets(targets, tasks)
    size = len(next(iter(target_arrays.values())))
    event = BatchEvent(
        step=step,
        epoch=epoch,
        phase=phase,
        time=time,
        targets=target_arrays,
        topk=_predictions(topk, logits, tasks),
        sizes=[size],
        losses=None if loss is None else [check_number(loss, "loss")],
        task_losses=_task_losses(task_losses, tasks),
        subsets=_subsets(subsets, size),
        sample_losses=None
        if sample_losses is None
        else finite_floats(sample_losses, "sample_losses", size),
    )
    try:
        check_batch_against(event, tasks, where="log_batch")
    except WireError as exc:
        raise InvalidRecord(str(exc)) from exc
    return event


def _targets(targets: Any, tasks: Sequence[TaskInfo]) -> dict[str, np.ndarray]:
    given = _mapping(targets, "targets")
    _check_tasks(given, tasks, "targets", exact=True)
    arrays = {t.name: class_indices(given[t.name], f"targets[{t.name!r}]", 1) for t in tasks}
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidRecord(f"targets: tasks disagree on the batch size: {sizes}")
    if not next(iter(sizes.values())):
        raise InvalidRecord("targets: a batch needs at least one sample, got 0")
    return arrays


def _predictions(topk: Any, logits: Any, tasks: Sequence[TaskInfo]) -> dict[str, np.ndarray]:
    if (topk is None) == (logits is None):
        got = "both" if topk is not None else "neither"
        raise InvalidRecord(f"topk/logits: pass exactly one of topk= and logits=, got {got}")
    if topk is not None:
        given = _mapping(topk, "topk")
        _check_tasks(given, tasks, "topk", exact=True)
        return {t.name: class_indices(given[t.name], f"topk[{t.name!r}]", 2) for t in tasks}
    given = _mapping(logits, "logits")
    _check_tasks(given, tasks, "logits", exact=True)
    return {
        t.name: topk_from_logits(given[t.name], t.num_classes, f"logits[{t.name!r}]") for t in tasks
    }


def _task_losses(task_losses: Any, tasks: Sequence[TaskInfo]) -> dict[str, list[float]]:
    if task_losses is None:
        return {}
    given = _mapping(task_losses, "task_losses")
    _check_tasks(given, tasks, "task_losses", exact=False)
    return {str(t): [check_number(v, f"task_losses[{t!r}]")] for t, v in given.items()}


def _subsets(subsets: Any, size: int) -> dict[str, Labels]:
    if subsets is None:
        return {}
    given = _mapping(subsets, "subsets")
    return {
        check_family(f, "subsets"): _labels(v, f"subsets[{f!r}]", size) for f, v in given.items()
    }


def check_family(value: Any, name: str, error: type[InvalidValue] = InvalidRecord) -> str:
    """A subset family name (``null`` is reserved for the service's null breakdown)."""
    return rules.check_family(value, f"{name} family", error)


def _labels(value: Any, name: str, size: int) -> Labels:
    array = to_numpy(value, name)
    if array.dtype.kind not in "UO" or (
        array.dtype.kind == "O" and not all(isinstance(v, str) for v in array.flat)
    ):
        raise InvalidType(f"{name}: expected str labels, got dtype {array.dtype}")
    if array.shape != (size,):
        raise InvalidRecord(
            f"{name}: expected {size} labels (one per sample), got shape {list(array.shape)}"
        )
    vocabulary, codes = np.unique(array, return_inverse=True)
    labels = [check_name(str(v), f"{name} label") for v in vocabulary]
    return labels, np.asarray(codes, dtype=np.int64).reshape(-1)


def build_scalar(
    kind: str, step: int, values: Any, time: float, higher_is_better: Any = None
) -> ScalarEvent:
    """Check ``log_lr/pipeline/gradnorm/custom`` arguments and build the scalar record."""
    given = _mapping(values, "values")
    if not given:
        raise InvalidRecord("values: expected at least one name -> value, got an empty dict")
    checked = {_scalar_name(k): check_number(v, f"values[{k!r}]") for k, v in given.items()}
    return ScalarEvent(kind, step, time, checked, _directions(higher_is_better, checked))


def _scalar_name(value: Any) -> str:
    return rules.check_scalar_name(value, "values", InvalidRecord)


def _directions(higher_is_better: Any, values: Mapping[str, float]) -> dict[str, bool]:
    if higher_is_better is None:
        return {}
    given = _mapping(higher_is_better, "higher_is_better")
    for name, flag in given.items():
        if name not in values:
            raise InvalidRecord(f"higher_is_better[{name!r}]: no value of that name in values")
        if not isinstance(flag, bool):
            raise InvalidType(f"higher_is_better[{name!r}]: expected a bool, got {flag!r}")
    return dict(given)
