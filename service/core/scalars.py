"""Scalar records (lr, pipeline, gradnorm, custom): per-rank values and their global mean.

The global value of a scalar is the mean over the ranks that reported it, computed from
exact fixed-point sums, so it does not depend on the order ranks arrive in.

>>> ScalarTable().set(0, {"backbone": 0.5}).set(1, {"backbone": 0.25}).means()
{'backbone': 0.375}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.core.exact import fixed, ratio


class ScalarTable:
    """Values per rank per name; later values of a rank replace earlier ones."""

    def __init__(self, by_rank: Mapping[int, Mapping[str, float]] | None = None) -> None:
        self.by_rank: dict[int, dict[str, float]] = {int(r): dict(v) for r, v in (by_rank or {}).items()}

    def set(self, rank: int, values: Mapping[str, float]) -> ScalarTable:
        """Record ``values`` of ``rank``."""
        self.by_rank.setdefault(rank, {}).update(values)
        return self

    def update(self, other: ScalarTable) -> None:
        """Take every value of ``other`` (it is later)."""
        for rank, values in other.by_rank.items():
            self.set(rank, values)

    def means(self) -> dict[str, float]:
        """Mean over reporting ranks, per name (sorted by name)."""
        sums: dict[str, list[int]] = {}
        for values in self.by_rank.values():
            for name, value in values.items():
                entry = sums.setdefault(name, [0, 0])
                entry[0] += fixed(value)
                entry[1] += 1
        return {name: ratio(total, count) for name, (total, count) in sorted(sums.items())}

    def __bool__(self) -> bool:
        return any(self.by_rank.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (rank keys as strings)."""
        return {str(r): dict(v) for r, v in self.by_rank.items()}
