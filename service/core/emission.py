"""What the run state hands to sinks: one group of key/values at one step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Emission groups. ``step``: a train/* step window (STEP interval); ``wandb``: the
#: step_avg and core/ keys at a WANDB step (wandb adds the latest ``step`` values at or
#: before it); ``console``: the console window; ``lr``/``pipeline``: scheduled scalars;
#: ``gradnorm``/``custom``: scalars as they arrive; ``epoch``: a closed phase epoch;
#: ``final``: the final_* summary written on finish.
GROUPS = ("step", "wandb", "console", "lr", "pipeline", "gradnorm", "custom", "epoch", "final")


@dataclass(frozen=True)
class Emission:
    """Values of one group that became final at ``step`` for run ``run_id``."""

    run_id: str
    step: int
    group: str
    values: Mapping[str, float]


class Sink(Protocol):
    """An output of emissions.

    ``emit`` is called with the run lock released, in emission order, and must neither
    block nor raise: a sink that does I/O queues the work for its own thread. Failures are
    counted and reported by ``status``.
    """

    name: str

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """A run was created or recovered; ``spec`` is its full spec including ``config``."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Queue emissions (all of one run, in order)."""

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        """Finish the run's output within ``timeout_s``; returns how it ended."""

    def delete_run(self, run_id: str) -> None:
        """Forget a deleted run (no output is removed)."""

    def status(self, run_id: str) -> dict[str, Any]:
        """Counters and state for ``GET /v1/runs/{run}``."""

    def close(self, timeout_s: float) -> None:
        """Flush and stop, finishing open runs within ``timeout_s``."""
