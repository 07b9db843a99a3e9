"""Checkpoint markers and the events held back behind them (DESIGN §3b consistent cuts).

>>> cuts = Cuts()
>>> cuts.mark(0, "100", world_size=2), cuts.holds(0)
(False, True)
>>> cuts.hold(0, "an event")
>>> cuts.mark(1, "100", world_size=2)
True
>>> cuts.release("100")
[(0, 'an event')]
"""

from __future__ import annotations

from typing import Any


class Cuts:
    """Open checkpoints: which ranks' markers are in, and what those ranks sent since."""

    def __init__(self) -> None:
        self.markers: dict[str, set[int]] = {}
        self.waiting: dict[int, str] = {}
        self.held: list[tuple[int, Any]] = []
        self.taken: list[tuple[str, dict[str, Any]]] = []

    def holds(self, rank: int) -> bool:
        """True while ``rank`` waits behind its marker."""
        return rank in self.waiting

    def hold(self, rank: int, event: Any) -> None:
        """Keep an event of a waiting rank, in arrival order."""
        self.held.append((rank, event))

    def mark(self, rank: int, checkpoint_id: str, world_size: int) -> bool:
        """Record ``rank``'s marker; True when it was the last one missing."""
        ranks = self.markers.setdefault(checkpoint_id, set())
        ranks.add(rank)
        if len(ranks) < world_size:
            self.waiting[rank] = checkpoint_id
            return False
        del self.markers[checkpoint_id]
        return True

    def release(self, checkpoint_id: str) -> list[tuple[int, Any]]:
        """Stop holding the ranks of a complete checkpoint; their held events, in order."""
        for rank in [r for r, c in self.waiting.items() if c == checkpoint_id]:
            del self.waiting[rank]
        held, self.held = self.held, []
        return held

    def missing(self, checkpoint_id: str, world_size: int) -> list[int]:
        """Ranks whose marker for ``checkpoint_id`` is not in."""
        return sorted(set(range(world_size)) - self.markers.get(checkpoint_id, set()))

    def drain_taken(self) -> list[tuple[str, dict[str, Any]]]:
        """Snapshots taken since the last drain."""
        out, self.taken = self.taken, []
        return out
