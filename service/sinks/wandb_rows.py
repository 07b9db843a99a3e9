"""Rows for wandb: at most one per step, strictly increasing steps (no locking, no I/O).

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
#: Steps of ``step`` windows kept to complete later ``wandb`` rows.
_MAX_WINDOWS = 64


def summary_kind(key: str) -> str | None:
    """``"min"`` for loss keys, ``"max"`` for accuracy keys, else ``None``.

    >>> summary_kind("val/loss_genus"), summary_kind("core/val_acc1/genus")
    ('min', 'max')
    >>> summary_kind("pipeline/cache/accesses") is None
    True
    """
    if key.startswith(("pipeline/", "gradnorm/", "custom/", "train/lr/")):
        return None
    words = key.replace("/", "_").split("_")
    if "loss" in words:
        return "min"
    if any(w == "acc" or w == "accuracy" or (w[:3] == "acc" and w[3:].isdigit()) for w in words):
        return "max"
    return None


class Rows:
    """Assembles a run's emissions into at most one row per step (no locking, no I/O)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows: dict[int, dict[str, Any]] = {}
        self._heap: list[int] = []
        self._top = -1
        self._windows: list[tuple[int, Mapping[str, Any]]] = []
        self.summary: dict[str, Any] = {}
        self.sent_step = -1
        self.skipped = 0
        self.dropped = 0
        self._last_skipped: int | None = None
        self.skip_note: tuple[int, int] | None = None

    def add(self, emission: Emission) -> None:
        """Fold one emission into the pending rows or the summary."""
        group = emission.group
        if group == "step":
            self._remember_window(emission.step, emission.values)
        elif group == "wandb":
            self._merge(emission.step, {**self._window_at(emission.step), **emission.values})
        elif group in ROW_GROUPS:
            self._merge(emission.step, emission.values)
        elif group == "final":
            self.summary.update(emission.values)

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

    def _remember_window(self, step: int, values: Mapping[str, Any]) -> None:
        # A window at or below a remembered one replaces the abandoned timeline after it.
        while self._windows and self._windows[-1][0] >= step:
            self._windows.pop()
        self._windows.append((step, values))
        if len(self._windows) > _MAX_WINDOWS:
            del self._windows[0]

    def _window_at(self, step: int) -> Mapping[str, Any]:
        for window in self._windows[::-1]:
            if window[0] <= step:
                return window[1]
        return {}

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
