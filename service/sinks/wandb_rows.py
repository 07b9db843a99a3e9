"""Rows for wandb: at most one per step, strictly increasing steps (no locking, no I/O).

The core hands whole rows (a ``wandb`` emission carries its step window); this module
only folds emissions of one step together and orders them.

wandb keeps one history row per step and drops steps lower than the last one it got, so
emissions are folded into rows here: the row of the highest step stays open until a
higher step arrives, lower rows are sealed in step order, and an emission for a step
already handed to wandb is skipped and counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from service.core.emission import Emission

ROW_GROUPS = frozenset({"wandb", "lr", "pipeline", "gradnorm", "custom", "epoch"})


class Rows:
    """Assembles a run's emissions into at most one row per step (no locking, no I/O)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows: dict[int, dict[str, Any]] = {}
        self._heap: list[int] = []
        self._top = -1
        self.directions: dict[str, str | None] = {}  # best tracking of every key seen, for define_metric
        self.summary: dict[str, Any] = {}
        self.sent_step = -1
        self.skipped = 0
        self.dropped = 0
        self._last_skipped: int | None = None
        self.skip_note: tuple[int, int] | None = None

    def add(self, emission: Emission) -> None:
        """Fold one emission into the pending rows or the summary."""
        group = emission.group
        if group not in ROW_GROUPS and group != "final":
            return  # step and console windows reach wandb inside the wandb rows that carry them
        for key, metric in emission.metrics.items():
            self.directions.setdefault(key, metric.direction)
        if group == "final":
            self.summary.update(emission.values)
        else:
            self._merge(emission.step, emission.row())

    def take(self, *, everything: bool) -> tuple[int, dict[str, Any]] | None:
        """Pop the lowest sealed row (the open one too when ``everything``)."""
        if not self._heap or (self._heap[0] == self._top and not everything):
            return None
        step = heapq.heappop(self._heap)
        self.sent_step = step
        return step, self.rows.pop(step)

    def sendable(self, *, everything: bool) -> bool:
        """Whether ``take`` would return a row."""
        return bool(self._heap) and (everything or self._heap[0] != self._top)

    def _merge(self, step: int, values: Mapping[str, Any]) -> None:
        if step <= self.sent_step:
            self._skip(step)
            return
        row = self.rows.get(step)
        if row is None:
            row = self.rows[step] = {}
            heapq.heappush(self._heap, step)
            self._top = max(self._top, step)
            if len(self.rows) > self.max_rows:
                del self.rows[heapq.heappop(self._heap)]
                self.dropped += 1
        row.update(values)

    def _skip(self, step: int) -> None:
        if step != self._last_skipped:
            self.skipped += 1
            self._last_skipped = step
        if self.skip_note is None:
            self.skip_note = (step, self.sent_step)
