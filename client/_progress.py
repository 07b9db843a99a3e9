"""This rank's progress as the service tracks it (DESIGN §3b), checked before queueing.

A rank has completed train step s once it logged a train batch or a scalar for a later
step, ended the train epoch, flushed or closed. A train record for a completed step, a
batch of an epoch the rank already ended and a custom metric whose direction changes are
refused here, at the call, instead of by the service, where they would cost the delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from client._checkpoint import RankPosition
from client._errors import InvalidRecord, StepAlreadyCompleted
from client._rules import RankSteps, completed_after
from client._wire import TRAIN_PHASE


@dataclass
class RankProgress:
    """Steps, epochs and metric directions this rank has reported (not thread-safe)."""

    steps: RankSteps = field(default_factory=RankSteps)
    ended: dict[str, set[int]] = field(default_factory=dict)
    directions: dict[str, bool] = field(default_factory=dict)

    def check_batch(self, phase: str, epoch: int, step: int) -> None:
        """Raise if a batch of ``phase``/``epoch`` at ``step`` is refused; else record it."""
        if self.ended and epoch in self.ended.get(phase, ()):
            raise InvalidRecord(f"epoch: this rank already ended {phase} epoch {epoch}")
        if phase == TRAIN_PHASE:
            self.see_train_step(step)

    def check_scalar(self, step: int, higher_is_better: Mapping[str, bool]) -> None:
        """Raise if a scalar at ``step`` is refused; else record it."""
        for name, flag in higher_is_better.items():
            if self.directions.get(name, flag) != flag:
                raise InvalidRecord(
                    f"higher_is_better[{name!r}]: declared {self.directions[name]} before, "
                    f"got {flag}"
                )
        self.see_train_step(step)
        self.directions.update(higher_is_better)

    def see_train_step(self, step: int) -> None:
        """A train record at ``step``: it completes every earlier step."""
        if self.steps.has_completed(step):
            raise StepAlreadyCompleted(
                f"step: step {step} was already completed by this rank (completed through "
                f"step {self.steps.completed}); flush() and state_dict() complete the last logged "
                "step, so call them after a step's last record"
            )
        self.steps = completed_after(self.steps, train_step=step)

    def end_epoch(self, phase: str, epoch: int) -> None:
        """The rank ended ``epoch`` of ``phase``; a train epoch completes the last step."""
        self.ended.setdefault(phase, set()).add(epoch)
        self.steps = completed_after(self.steps, end_train_epoch=phase == TRAIN_PHASE)

    def complete(self) -> int | None:
        """Complete through the last logged step; returns it, or None if nothing was open."""
        if self.steps.last_step <= self.steps.completed:
            return None
        self.steps = completed_after(self.steps, through_step=self.steps.last_step)
        return self.steps.completed

    def reset(self, position: RankPosition) -> None:
        """Go back to a cut (``load_state_dict``); directions declared so far stay."""
        self.steps = RankSteps(position.last_step, position.completed)
        self.ended = {phase: set(epochs) for phase, epochs in position.ended.items()}
