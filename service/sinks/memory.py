"""An in-memory sink that records emissions; the test double for outputs."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.emission import Emission, Notice


class MemorySink:
    """Keeps every emission per run; ``wait_for`` lets tests wait without sleeping."""

    name = "memory"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.emissions: dict[str, list[Emission]] = {}
        self.specs: dict[str, Mapping[str, Any]] = {}
        self.finished: dict[str, Mapping[str, float]] = {}
        self.notices: dict[str, list[Notice]] = {}

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        with self._cond:
            self.specs[run_id] = spec
            self.emissions.setdefault(run_id, [])

    def emit(self, emissions: Sequence[Emission]) -> None:
        with self._cond:
            for emission in emissions:
                self.emissions.setdefault(emission.run_id, []).append(emission)
            self._cond.notify_all()

    def notice(self, notice: Notice) -> None:
        with self._cond:
            self.notices.setdefault(notice.run_id, []).append(notice)
            self._cond.notify_all()

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        with self._cond:
            self.finished[run_id] = dict(summary)
            self._cond.notify_all()
        return "finished"

    def delete_run(self, run_id: str) -> None:
        with self._cond:
            self.emissions.pop(run_id, None)
            self.specs.pop(run_id, None)

    def status(self, run_id: str) -> dict[str, Any]:
        with self._cond:
            return {"emissions": len(self.emissions.get(run_id, []))}

    def close(self, timeout_s: float) -> None:
        """Nothing to release."""

    def of(self, run_id: str, group: str | None = None) -> list[Emission]:
        """A copy of the run's emissions, optionally of one group."""
        with self._cond:
            found = list(self.emissions.get(run_id, []))
        return [e for e in found if group is None or e.group == group]

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds or the deadline passes."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout=timeout_s))
