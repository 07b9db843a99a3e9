"""Latest values, bounded history and best values of a run's emitted keys.

History keeps at most ``max_points`` per key: when a series overflows, every other point
of its older half is dropped (the newer half keeps full resolution), so long runs stay
bounded, old points are downsampled rather than cut, and the recent past stays exact.

>>> book = MetricsBook(max_points=4)
>>> for step in range(1, 7):
...     book.record(step, {"train/loss": float(step)})
>>> book.history["train/loss"][0].tolist()
[1, 4, 5, 6]
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from typing import Any

from service.core.emission import MetricId

DEFAULT_MAX_POINTS = 10_000


class MetricsBook:
    """What has been emitted: latest value per key, history series, best values."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS) -> None:
        self.max_points = max_points
        self.latest: dict[str, tuple[float, int]] = {}
        # typed arrays: 16 bytes a point instead of two boxed Python numbers
        self.history: dict[str, tuple[array[int], array[float]]] = {}
        self.best: dict[str, tuple[float, bool]] = {}
        self.ids: dict[str, MetricId] = {}  # what each key is, for readers that must not parse keys

    def record(self, step: int, values: Mapping[str, float], metrics: Mapping[str, MetricId] | None = None) -> None:
        """Record values emitted at ``step`` (with their identities when given)."""
        for key, metric in (metrics or {}).items():
            if key in values and key not in self.ids:
                self.ids[key] = metric
        for key, value in values.items():
            self.latest[key] = (value, step)
            found = self.history.get(key)
            if found is None:
                found = self.history[key] = (array("q"), array("d"))
            steps, series = found
            steps.append(step)
            series.append(value)
            if len(steps) > self.max_points:
                _thin(steps, series)

    def offer_best(self, key: str, value: float, higher_is_better: bool) -> None:
        """Keep ``value`` under ``key`` if it beats the best so far."""
        known = self.best.get(key)
        better = known is None or (value > known[0] if higher_is_better else value < known[0])
        if better:
            self.best[key] = (value, higher_is_better)

    def best_values(self) -> dict[str, float]:
        """``{final_key: best value}``, sorted by key."""
        return {k: v for k, (v, _) in sorted(self.best.items())}

    def to_dict(self, binary: bool = False) -> dict[str, Any]:
        """JSON-safe form; ``binary``: history series as little-endian bytes (recovery images:
        written every few thousand events, a list of boxed numbers per point was most of their cost)."""
        return {
            "max_points": self.max_points,
            "latest": {k: [v, s] for k, (v, s) in self.latest.items()},
            "history": {k: [_bytes_of(st), _bytes_of(vs)] if binary else [st.tolist(), vs.tolist()]
                        for k, (st, vs) in self.history.items()},
            "best": {k: [v, h] for k, (v, h) in self.best.items()},
            "ids": {k: m.to_dict() for k, m in self.ids.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricsBook:
        """Inverse of ``to_dict``."""
        book = cls(int(data["max_points"]))
        book.latest = {k: (float(v), int(s)) for k, (v, s) in data["latest"].items()}
        book.history = {}
        for key, (steps, values) in data["history"].items():
            series = _series_of("q", steps, int), _series_of("d", values, float)
            if len(series[0]) != len(series[1]):
                raise ValueError(f"history of {key!r}: {len(series[0])} steps but {len(series[1])} values")
            book.history[key] = series
        book.best = {k: (float(v), bool(h)) for k, (v, h) in data["best"].items()}
        # absent in snapshots written before values carried identities
        book.ids = {str(k): MetricId.from_dict(str(k), m) for k, m in data.get("ids", {}).items()}
        return book


def _bytes_of(series: array[Any]) -> bytes:
    """A typed array's items as little-endian bytes."""
    if sys.byteorder == "little":
        return series.tobytes()
    swapped = array(series.typecode, series)
    swapped.byteswap()
    return swapped.tobytes()


def _series_of(typecode: str, stored: Any, kind: type) -> array[Any]:
    """Inverse of ``_bytes_of``, or of ``tolist()`` (JSON snapshots); ValueError if the bytes do not fit."""
    if not isinstance(stored, bytes | bytearray):
        return array(typecode, [kind(x) for x in stored])
    series = array(typecode)
    series.frombytes(stored)  # ValueError unless a whole number of items
    if sys.byteorder != "little":
        series.byteswap()
    return series


def _thin(steps: array[int], values: array[float]) -> None:
    half = len(steps) // 2
    steps[:half] = steps[:half:2]
    values[:half] = values[:half:2]
