"""What the run state hands to sinks: values that say what they are, and status notices.

An ``Emission`` is one group of values that became final at one step. Each value comes
with its ``MetricId`` (kind, statistic, phase, window, task, subset, direction for best
tracking), so sinks and the dashboard format values without re-parsing key strings.

A ``Notice`` is a status change of a run (created, a session opened or fenced, a
checkpoint taken, a restore, finished, an alert): the runtime hands notices to sinks in
the same ordered stream as emissions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: Emission groups. ``step``: a train/* step window (STEP interval); ``wandb``: a whole
#: wandb row at a WANDB step (step_avg and core/ keys, plus the latest ``step`` window at
#: or before it in ``carried``); ``console``: the console window; ``lr``/``pipeline``:
#: scheduled scalars; ``gradnorm``/``custom``: scalars as they arrive; ``epoch``: a closed
#: phase epoch; ``final``: the final_* summary written on finish.
GROUPS = ("step", "wandb", "console", "lr", "pipeline", "gradnorm", "custom", "epoch", "final")

Direction = Literal["min", "max"] | None


@dataclass(frozen=True)
class MetricId:
    """The identity of one emitted value.

    Attributes:
        key: the key wandb and the HTTP API use (built by ``naming``).
        kind: ``window`` (a computed accuracy/loss), ``rate`` (samples/s, eta, duration),
            ``lr``, ``pipeline``, ``gradnorm``, ``custom``, ``core`` or ``final``.
        statistic: ``loss``, ``acc1``, ``acc3``, ``chain_accuracy``,
            ``partial_chain_accuracy``, a rate name, or a scalar's name.
        phase: ``train``, ``val``, ``val_mask`` or a custom phase (None for scalars).
        window: ``step``, ``step_avg`` or ``epoch`` (None when not a window value).
        task: the task of a per-task value.
        family: subset family of a subset value (with ``label``).
        label: subset label.
        direction: ``min`` or ``max`` when best tracking applies, else None.
    """

    key: str
    kind: str
    statistic: str
    phase: str | None = None
    window: str | None = None
    task: str | None = None
    family: str | None = None
    label: str | None = None
    direction: Direction = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form without the key (the key is the mapping's key)."""
        return {"kind": self.kind, "statistic": self.statistic, "phase": self.phase, "window": self.window,
                "task": self.task, "family": self.family, "label": self.label, "direction": self.direction}

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any]) -> MetricId:
        """Inverse of ``to_dict``; raises ValueError on a malformed document."""
        direction = data.get("direction")
        if direction not in ("min", "max", None):
            raise ValueError(f"metric {key!r}: direction must be 'min', 'max' or null, got {direction!r}")
        fields = ("phase", "window", "task", "family", "label")
        optional = {f: None if data.get(f) is None else str(data[f]) for f in fields}
        return cls(key, str(data["kind"]), str(data["statistic"]), direction=direction, **optional)


@dataclass(frozen=True)
class Emission:
    """Values of one group that became final at ``step`` for run ``run_id``.

    ``values`` are the values emitted now; ``carried`` are values emitted earlier that
    belong to this row too (a wandb row carries the latest step window). ``metrics`` has
    the identity of every key of both.
    """

    run_id: str
    step: int
    group: str
    values: Mapping[str, float]
    metrics: Mapping[str, MetricId] = field(default_factory=dict)
    carried: Mapping[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        """Every value of the row: carried ones first, then this emission's own."""
        return {**self.carried, **self.values}


@dataclass(frozen=True)
class Notice:
    """A status change of a run (``kind``: created, session, fenced, checkpoint, restore,
    finished, ranks, quarantined, alert)."""

    run_id: str
    kind: str
    step: int
    detail: Mapping[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    """An output of emissions.

    ``emit`` and ``notice`` are called with the run lock released, in the order the run
    produced them, and must neither block nor raise: a sink that does I/O queues the work
    for its own thread. Failures are counted and reported by ``status``.
    """

    name: str

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """A run was created or recovered; ``spec`` is its full spec including ``config``."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Queue emissions (all of one run, in order)."""

    def notice(self, notice: Notice) -> None:
        """A status change of a run (after the emissions produced before it)."""

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        """Finish the run's output within ``timeout_s``; returns how it ended."""

    def delete_run(self, run_id: str) -> None:
        """Forget a deleted run (no output is removed)."""

    def status(self, run_id: str) -> dict[str, Any]:
        """Counters and state for ``GET /v1/runs/{run}``."""

    def close(self, timeout_s: float) -> None:
        """Flush and stop, finishing open runs within ``timeout_s``."""
