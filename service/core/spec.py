"""A run's spec: what it was created with, validated once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client._wire import NAME_PATTERN, RESERVED_FAMILY, TaskInfo
from service.core.alerts import parse_rules
from service.core.errors import InvalidInput
from service.core.experiment import resolve_wandb_options, without_secrets
from service.core.schedule import Schedule, resolve_schedule

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_CLASSES = 2**31 - 1
MAX_WORLD_SIZE = 65_536
MAX_CONFIG_DEPTH = 32


@dataclass(frozen=True)
class RunSpec:
    """The validated spec of a run.

    ``to_dict`` gives the canonical form used to compare specs (idempotent create).
    """

    run_id: str
    world_size: int
    total_steps: int
    tasks: tuple[TaskInfo, ...]
    subsets: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        """Task names in declared order."""
        return [t.name for t in self.tasks]

    def schedule(self) -> Schedule:
        """The logging schedule resolved from the config's METRICS section."""
        return resolve_schedule(self.config, self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the spec."""
        return {
            "run_id": self.run_id,
            "world_size": self.world_size,
            "total_steps": self.total_steps,
            "tasks": [vars(t).copy() for t in self.tasks],
            "subsets": {f: list(labels) for f, labels in self.subsets.items()},
            "config": self.config,
        }


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a valid run id, else raise InvalidInput."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or run_id in {".", ".."}:
        raise InvalidInput(f"run_id: invalid run id {run_id!r} (allowed: {RUN_ID_PATTERN.pattern})")
    return run_id


def parse_spec(raw: Mapping[str, Any]) -> RunSpec:
    """Validate a run spec dict (the body of ``POST /v1/runs``).

    Raises:
        InvalidInput: naming the first bad field and value.
        ConfigError: when the config's METRICS section is invalid.
    """
    spec = RunSpec(
        run_id=check_run_id(raw.get("run_id")),
        world_size=_bounded_int(raw, "world_size", 1, MAX_WORLD_SIZE),
        total_steps=_bounded_int(raw, "total_steps", 1, 2**53),
        tasks=_tasks(raw.get("tasks")),
        subsets=_subsets(raw.get("subsets")),
        config=_config(raw.get("config")),
    )
    spec.schedule()  # validates METRICS and EXPERIMENT now, not at the first emission
    resolve_wandb_options(spec.config, spec.run_id)
    parse_rules(spec.config)
    return spec


def _bounded_int(raw: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _tasks(raw: Any) -> tuple[TaskInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"tasks: expected a non-empty list of tasks, got {raw!r}")
    tasks = tuple(_task(item, i) for i, item in enumerate(raw))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InvalidInput(f"tasks: duplicate task names in {names}")
    return tasks


def _task(item: Any, index: int) -> TaskInfo:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"tasks[{index}]: expected an object, got {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInput(f"tasks[{index}].name: invalid task name {name!r}")
    num_classes = _bounded_int(item, "num_classes", 1, MAX_CLASSES)
    null_index = item.get("null_index", 0)
    if not isinstance(null_index, int) or isinstance(null_index, bool) or not 0 <= null_index < num_classes:
        raise InvalidInput(f"tasks[{index}].null_index: expected an integer in [0, {num_classes}), got {null_index!r}")
    unknown = sorted(set(item) - {"name", "num_classes", "null_index"})
    if unknown:
        raise InvalidInput(f"tasks[{index}]: unknown field(s) {unknown}")
    return TaskInfo(name, num_classes, null_index)


def _subsets(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"subsets: expected an object of family -> labels, got {raw!r}")
    out = {}
    for family, labels in raw.items():
        if not isinstance(family, str) or not NAME_PATTERN.match(family) or family == RESERVED_FAMILY:
            raise InvalidInput(f"subsets: invalid family name {family!r}")
        if not isinstance(labels, list) or not all(isinstance(v, str) and NAME_PATTERN.match(v) for v in labels):
            raise InvalidInput(f"subsets.{family}: expected a list of label names, got {labels!r}")
        out[family] = list(dict.fromkeys(labels))
    return out


def _config(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"config: expected an object, got {type(raw).__name__}")
    if _depth(raw) > MAX_CONFIG_DEPTH:
        raise InvalidInput(f"config: nested deeper than {MAX_CONFIG_DEPTH} levels")
    return without_secrets(raw)  # an API key is never stored, served or forwarded


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists, measured without recursion."""
    depth, level = 0, [value]
    while level and depth <= MAX_CONFIG_DEPTH:
        depth += 1
        level = [v for item in level if isinstance(item, Mapping | list)
                 for v in (item.values() if isinstance(item, Mapping) else item)]
    return depth
