"""A run's spec: what it was created with, validated once.

The rules (limits, name patterns, the reserved family, plain-JSON config) are
``client._rules``, the ones the client applies in its constructor; this module adds what
only the service interprets: the config's ``METRICS`` and ``EXPERIMENT`` sections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client import _rules as rules
from client._errors import ClientError
from client._rules import TaskInfo
from service.core.alerts import parse_rules
from service.core.errors import InvalidInput
from service.core.experiment import resolve_wandb_options, without_secrets
from service.core.schedule import Schedule, resolve_schedule


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
    try:
        return rules.check_run_id(run_id)
    except ClientError as exc:
        raise InvalidInput(str(exc)) from exc


def parse_spec(raw: Mapping[str, Any]) -> RunSpec:
    """Validate a run spec dict (the body of ``POST /v1/runs``).

    Raises:
        InvalidInput: naming the first bad field and value.
        ConfigError: when the config's METRICS section is invalid.
    """
    try:
        fields = rules.parse_run_spec(raw)
    except ClientError as exc:
        raise InvalidInput(str(exc)) from exc
    spec = RunSpec(
        run_id=fields.run_id,
        world_size=fields.world_size,
        total_steps=fields.total_steps,
        tasks=fields.tasks,
        subsets=fields.subsets,
        config=without_secrets(fields.config),  # an API key is never stored, served or forwarded
    )
    spec.schedule()  # validates METRICS and EXPERIMENT now, not at the first emission
    resolve_wandb_options(spec.config, spec.run_id)
    parse_rules(spec.config)
    return spec
