"""The run-spec rules, limits and name patterns: written once, here.

The client's constructor, the service's API schemas and its core all take these rules
from this module, so what a client accepts the service accepts (DESIGN §7): a client
built without an error is never refused later for its spec.

Names are matched in full (``\\Z``, not ``$``): a trailing newline or a control character
never passes. Checks raise ``InvalidValue`` (a ``ValueError``) or ``InvalidType`` (a
``TypeError``) naming the argument and the value; the service turns them into its own
``InvalidInput`` (HTTP 422).

>>> check_run_id("exp-42.a")
'exp-42.a'
>>> check_run_id("exp42\\n")
Traceback (most recent call last):
...
client._errors.InvalidValue: run_id: invalid run id 'exp42\\n' (allowed: [A-Za-z0-9._-]{1,128}, not . or ..)
>>> completed_after(RankSteps(), train_step=5)
RankSteps(last_step=5, completed=4)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from client._errors import InvalidType, InvalidValue

RUN_ID_CHARSET = "A-Za-z0-9._-"  # also what the service allows in the wandb run ids it derives
RUN_ID_CHARS = rf"[{RUN_ID_CHARSET}]{{1,128}}"
NAME_CHARS = r"[A-Za-z0-9_.:+=@-]{1,128}"
SCALAR_NAME_CHARS = r"[A-Za-z0-9_.:+=@-][A-Za-z0-9_.:+=@/-]{0,199}"
RUN_ID_PATTERN = re.compile(RUN_ID_CHARS + r"\Z")
NAME_PATTERN = re.compile(NAME_CHARS + r"\Z")
SCALAR_NAME_PATTERN = re.compile(SCALAR_NAME_CHARS + r"\Z")

RESERVED_FAMILY = "null"  # the service's built-in null/non_null breakdown; no client may send it
MAX_TASKS = 256
MAX_FAMILIES = 64
MAX_LABELS_PER_FAMILY = 4_096
MAX_CLASSES = 2**31 - 1
MAX_WORLD_SIZE = 65_536
MAX_STEP = 2**53
MAX_CONFIG_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TASK_FIELDS = frozenset({"name", "num_classes", "null_index"})


def json_pattern(chars: str) -> str:
    """``chars`` anchored for a JSON-schema ``pattern`` (end of text: ``$`` in Rust's regex)."""
    return f"^(?:{chars})$"


@dataclass(frozen=True)
class TaskInfo:
    """What a run says of one task."""

    name: str
    num_classes: int
    null_index: int = 0


@dataclass(frozen=True)
class SpecFields:
    """The fields of a run spec, checked against every rule of this module."""

    run_id: str
    world_size: int
    total_steps: int
    tasks: tuple[TaskInfo, ...]
    subsets: dict[str, list[str]]
    config: dict[str, Any]


# ---------------------------------------------------------------- single values


def check_run_id(value: Any) -> str:
    """A run id: ``[A-Za-z0-9._-]{1,128}``, not ``.`` or ``..``."""
    if not isinstance(value, str):
        raise InvalidType(f"run_id: expected a str, got {type(value).__name__}")
    if not RUN_ID_PATTERN.match(value) or value in {".", ".."}:
        raise InvalidValue(f"run_id: invalid run id {value!r} (allowed: {RUN_ID_CHARS}, not . or ..)")
    return value


def check_name(value: Any, where: str, error: type[InvalidValue] = InvalidValue) -> str:
    """A task, family, label, phase or checkpoint name, matched in full."""
    if not isinstance(value, str):
        raise InvalidType(f"{where}: expected a str, got {type(value).__name__}")
    if not NAME_PATTERN.match(value):
        raise error(f"{where}: invalid name {value!r} (allowed: {NAME_CHARS})")
    return value


def check_scalar_name(value: Any, where: str, error: type[InvalidValue] = InvalidValue) -> str:
    """A scalar's name (lr group, pipeline stat, custom metric): may contain ``/``."""
    if not isinstance(value, str) or not SCALAR_NAME_PATTERN.match(value):
        raise error(f"{where}: invalid name {value!r} (allowed: {SCALAR_NAME_CHARS})")
    return value


def check_family(value: Any, where: str, error: type[InvalidValue] = InvalidValue) -> str:
    """A subset family name; ``null`` is reserved for the service's null/non_null breakdown."""
    family = check_name(value, where, error)
    if family == RESERVED_FAMILY:
        raise error(f"{where}: the family name {RESERVED_FAMILY!r} is reserved (the built-in null/non_null subset)")
    return family


def check_int(value: Any, where: str, low: int, high: int) -> int:
    """An int (not a bool) in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidType(f"{where}: expected an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidValue(f"{where}: expected an integer in [{low}, {high}], got {value}")
    return value


def check_vocabulary(families: int, labels: Mapping[str, int]) -> None:
    """A run may have at most 64 subset families and 4,096 labels per family.

    Args:
        families: how many families the run would have.
        labels: how many labels each family would have (only the grown ones need be given).
    """
    if families > MAX_FAMILIES:
        raise InvalidValue(f"subsets: {families} families, more than the limit of {MAX_FAMILIES} per run")
    for family, count in labels.items():
        if count > MAX_LABELS_PER_FAMILY:
            raise InvalidValue(
                f"subsets[{family!r}]: {count} labels, more than the limit of {MAX_LABELS_PER_FAMILY} per family"
            )


# ---------------------------------------------------------------- the spec


def parse_run_spec(raw: Any) -> SpecFields:
    """Check a run spec (the body of ``POST /v1/runs``) against every rule here.

    The config is checked for plain JSON values only; its ``METRICS`` and ``EXPERIMENT``
    sections are the service's to interpret.

    Raises:
        InvalidValue / InvalidType: naming the first bad field and its value.
    """
    if not isinstance(raw, Mapping):
        raise InvalidType(f"run spec: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"run_id", "world_size", "total_steps", "tasks", "subsets", "config"})
    if unknown:
        raise InvalidValue(f"run spec: unknown field(s) {unknown}")
    return SpecFields(
        run_id=check_run_id(raw.get("run_id")),
        world_size=check_int(raw.get("world_size"), "world_size", 1, MAX_WORLD_SIZE),
        total_steps=check_int(raw.get("total_steps"), "total_steps", 1, MAX_STEP),
        tasks=parse_tasks(raw.get("tasks")),
        subsets=parse_subsets(raw.get("subsets")),
        config=parse_config(raw.get("config")),
    )


def parse_tasks(raw: Any) -> tuple[TaskInfo, ...]:
    """A list of ``{"name", "num_classes", "null_index"?}``: 1 to 256 tasks, names unique."""
    if not isinstance(raw, list | tuple):
        raise InvalidType(f"tasks: expected a list of tasks, got {type(raw).__name__}")
    if not 1 <= len(raw) <= MAX_TASKS:
        raise InvalidValue(f"tasks: expected 1 to {MAX_TASKS} tasks, got {len(raw)}")
    tasks = tuple(_task(item, i) for i, item in enumerate(raw))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InvalidValue(f"tasks: duplicate task names in {sorted(n for n in set(names) if names.count(n) > 1)}")
    return tasks


def _task(item: Any, index: int) -> TaskInfo:
    if not isinstance(item, Mapping):
        raise InvalidType(f"tasks[{index}]: expected an object, got {type(item).__name__}")
    unknown = sorted(map(str, set(item) - TASK_FIELDS))
    if unknown:
        raise InvalidValue(f"tasks[{index}]: unknown field(s) {unknown}")
    name = check_name(item.get("name"), f"tasks[{index}].name")
    num_classes = check_int(item.get("num_classes"), f"tasks[{name!r}].num_classes", 1, MAX_CLASSES)
    null_index = check_int(item.get("null_index", 0), f"tasks[{name!r}].null_index", 0, num_classes - 1)
    return TaskInfo(name, num_classes, null_index)


def parse_subsets(raw: Any) -> dict[str, list[str]]:
    """A declaration ``{family: [labels]}`` (labels deduplicated, order kept); None is none."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidType(f"subsets: expected an object of family -> labels, got {type(raw).__name__}")
    out = {}
    for family, labels in raw.items():
        check_family(family, "subsets")
        if isinstance(labels, str) or not isinstance(labels, list | tuple):
            raise InvalidType(f"subsets[{family!r}]: expected a list of labels, got {type(labels).__name__}")
        out[family] = list(dict.fromkeys(check_name(v, f"subsets[{family!r}] label") for v in labels))
    check_vocabulary(len(out), {f: len(v) for f, v in out.items()})
    return out


def parse_config(raw: Any) -> dict[str, Any]:
    """A config of plain JSON values: str keys, finite numbers, ints within int64, depth <= 32."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidType(f"config: expected an object, got {type(raw).__name__}")
    check_plain_json(raw, "config")
    return dict(raw)


def check_plain_json(value: Any, where: str) -> None:
    """Raise unless ``value`` is plain JSON a strict parser round-trips (walked without recursion)."""
    level: list[tuple[str, Any]] = [(where, value)]
    for _ in range(MAX_CONFIG_DEPTH):
        deeper: list[tuple[str, Any]] = []
        for path, item in level:
            deeper.extend(_children(path, item))
        if not deeper:
            return
        level = deeper
    raise InvalidValue(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels")


def _children(path: str, item: Any) -> list[tuple[str, Any]]:
    if isinstance(item, Mapping):
        bad = next((k for k in item if not isinstance(k, str)), None)
        if bad is not None:
            raise InvalidType(f"{path}: keys must be str, got {type(bad).__name__} {bad!r}")
        return [(f"{path}.{k}", v) for k, v in item.items()]
    if isinstance(item, list | tuple):
        return [(f"{path}[{i}]", v) for i, v in enumerate(item)]
    _check_leaf(path, item)
    return []


def _check_leaf(path: str, item: Any) -> None:
    if item is None or isinstance(item, str | bool):
        return
    if isinstance(item, int):
        if not INT64_MIN <= item <= INT64_MAX:
            raise InvalidValue(f"{path}: integer {item} outside int64")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidValue(f"{path}: expected a finite number, got {item}")
    else:
        raise InvalidType(f"{path}: expected a JSON value, got {type(item).__name__}")


# ---------------------------------------------------------------- the step-completion rule


class RankSteps(NamedTuple):
    """How far one rank got in train steps (-1: before its first).

    DESIGN §3b: a rank has completed train step s once it sent a train batch or a scalar
    for a later step, ended the train epoch, or flushed/closed (``complete``). A named tuple:
    the client builds one for every logged record.
    """

    last_step: int = -1
    completed: int = -1

    def has_completed(self, step: int) -> bool:
        """True if a train record at ``step`` would come too late."""
        return step <= self.completed


def completed_after(
    steps: RankSteps,
    *,
    train_step: int | None = None,
    end_train_epoch: bool = False,
    through_step: int | None = None,
) -> RankSteps:
    """Where a rank stands after one more record.

    Args:
        steps: where it stood.
        train_step: the step of a train batch or of a scalar (completes every earlier step).
        end_train_epoch: the rank ended a train epoch (completes its last step).
        through_step: the rank flushed or closed, completing through this step.
    """
    last, completed = steps.last_step, steps.completed
    if train_step is not None:
        last, completed = max(last, train_step), max(completed, train_step - 1)
    if end_train_epoch:
        completed = max(completed, last)
    if through_step is not None:
        completed = max(completed, through_step)
    return RankSteps(last, completed)
