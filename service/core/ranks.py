"""How far each rank has got, and the step-completion rule (DESIGN §3b).

A rank has completed train step s once it sent a train batch or a scalar for a later
step, ended the train epoch, flushed or closed. A train record for a step its rank has
already completed is refused. The rule itself is ``client._rules.completed_after``, the
one the client applies before it queues a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client._rules import RankSteps, completed_after
from client._wire import TRAIN_PHASE, BatchEvent, CompleteEvent, EndEpochEvent, Event, ScalarEvent
from service.core.errors import StepAlreadyCompleted


@dataclass
class RankState:
    """How far one rank has got."""

    completed: int = -1
    last_step: int = -1
    ended: dict[str, set[int]] = field(default_factory=dict)

    def copy(self) -> RankState:
        """An independent copy (for checks that must not mutate)."""
        return RankState(self.completed, self.last_step, {p: set(e) for p, e in self.ended.items()})

    def see_step(self, step: int) -> None:
        """A train record at ``step`` completes every earlier step."""
        self._move(train_step=step)

    def advance(self, event: Event) -> None:
        """Move this rank's position past ``event``."""
        if (isinstance(event, BatchEvent) and event.phase == TRAIN_PHASE) or isinstance(event, ScalarEvent):
            # the common case, once a record on check and twice on apply: no keyword dict, no extra frame
            self.last_step, self.completed = completed_after(RankSteps(self.last_step, self.completed),
                                                             train_step=event.step)
        elif isinstance(event, EndEpochEvent):
            self.ended.setdefault(event.phase, set()).add(event.epoch)
            self._move(end_train_epoch=event.phase == TRAIN_PHASE)
        elif isinstance(event, CompleteEvent):
            self._move(through_step=event.through_step)

    def _move(self, **record: Any) -> None:
        moved = completed_after(RankSteps(self.last_step, self.completed), **record)
        self.last_step, self.completed = moved.last_step, moved.completed

    def check_step(self, step: int, where: str) -> None:
        """Raise StepAlreadyCompleted if this rank already completed ``step``."""
        if RankSteps(self.last_step, self.completed).has_completed(step):
            raise StepAlreadyCompleted(
                f"{where}.step: step {step} was already completed by this rank (completed through {self.completed})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"completed": self.completed, "last_step": self.last_step,
                "ended": {p: sorted(e) for p, e in self.ended.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankState:
        """Inverse of ``to_dict``."""
        return cls(int(data["completed"]), int(data["last_step"]),
                   {p: {int(e) for e in v} for p, v in data["ended"].items()})
