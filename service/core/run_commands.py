"""One run's commands: sessions, deliveries, restores, finish (used live and on replay).

Every command has a check that changes nothing (``plan_*``/``check_*``) and an apply that
never fails. The runtime makes a checked command durable between the two; replaying the
journal applies the same commands, so recovery follows exactly the code that produced
the state.

Restore rule (DESIGN §3b): the run counts events only from sessions that loaded the
current generation (the snapshot last restored; ``None`` before any restore). Loading
the same snapshot again only joins its generation, so ranks may load in any order. When a
session that had already sent counted events after loading is fenced (its trainer was
replaced: the resumed attempt died), the run returns to the generation's snapshot and
every rank must load it again: no window can then mix ranks of two attempts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from client._wire import BatchBlock, BatchEvent, Event, ScalarEvent, record_count
from service.core.alerts import Alert, AlertBook, parse_rules
from service.core.emission import Emission
from service.core.errors import CheckpointPending, InvalidInput
from service.core.ranks import RankState
from service.core.run_state import RunState
from service.core.sessions import Session, SessionTable
from service.core.snapshot import make_snapshot, open_snapshot
from service.core.spec import RunSpec

MAX_CHECKPOINTS_IN_MEMORY = 4


@dataclass(frozen=True)
class DeliveryPlan:
    """A checked delivery: which of its events are new and whether they count."""

    session: Session
    offset: int
    fresh: Sequence[Event]
    counted: bool
    checked: RankState | None = None  # the rank's position after ``fresh``, as the check found it


@dataclass
class Run:
    """A run: its state, sessions, restore generation, checkpoints and counters."""

    spec: RunSpec
    state: RunState
    sessions: SessionTable = field(default_factory=SessionTable)
    generation: str | None = None
    base: dict[str, Any] | None = None
    checkpoints: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("events", "records", "deliveries", "duplicates", "ignored", "samples", "restores", "resets"), 0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    events_since_image: int = 0
    new_checkpoints: list[str] = field(default_factory=list)  # taken, not yet persisted by the runtime
    alerts: AlertBook = field(default_factory=AlertBook)
    new_alerts: list[Alert] = field(default_factory=list)  # fired, not yet handed out by the runtime
    markers: list[dict[str, Any]] = field(default_factory=list)  # checkpoints and restores on the step axis
    # wall-clock times the runtime sets (the core never reads a clock); created_at is journaled
    created_at: float | None = None
    updated_at: float | None = None
    last_seen: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.alerts.rules:
            self.alerts.rules = parse_rules(self.spec.config)

    def adopt(self, other: Run) -> None:
        """Take every field of ``other`` but the lock: the runtime rolls a run back this way to the
        state rebuilt from its store, so that code holding this object sees that state."""
        for name in (f.name for f in fields(self)):
            if name != "lock":
                setattr(self, name, getattr(other, name))

    # ------------------------------------------------------------ sessions

    def check_session(self, rank: int) -> None:
        """Raise InvalidInput unless ``rank`` is a rank of this run."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.spec.world_size:
            raise InvalidInput(f"rank: expected an integer in [0, {self.spec.world_size}), got {rank!r}")

    def open_session(self, rank: int, session_id: str) -> list[str]:
        """Open a session for ``rank`` (checked); returns the ids of the sessions it fenced.

        May return the run to its generation's snapshot (see the module docstring).
        """
        replaced = [s for s in self.sessions.live().values() if s.rank == rank]
        self.sessions.open(rank, session_id)
        attempt_died = any(s.restore_id == self.generation and s.applied for s in replaced)
        if self.generation is not None and attempt_died and self.base is not None:
            self._reset(open_snapshot(self.base, self.spec))
            self.counters["resets"] += 1
            self._rolled_back(self.generation)
        return [s.id for s in replaced]

    # ------------------------------------------------------------ deliveries

    def plan_delivery(self, session_id: str, seq: int, events: Sequence[Event]) -> DeliveryPlan:
        """Check a delivery (changes nothing); raises on an invalid one."""
        session = self.sessions.get(session_id)
        offset = self.sessions.fresh_offset(session, seq, len(events))
        fresh = events[offset:]
        counted = session.restore_id == self.generation
        checked = self.state.check(session.rank, fresh) if fresh and counted else None
        return DeliveryPlan(session, offset, fresh, counted, checked)

    def apply_delivery(self, plan: DeliveryPlan) -> dict[str, int]:
        """Apply a checked delivery; returns ``{acked_seq, applied, ignored}``."""
        session, fresh, counted = plan.session, plan.fresh, plan.counted
        first = len(self.state.outbox)
        if fresh:
            if counted:
                self.state.apply(session.rank, fresh, plan.checked)
                session.applied += len(fresh)
                self._judge(first, session.rank, fresh)
            session.next_seq += len(fresh)
            self._count(fresh, counted)
            self._keep_checkpoints()
        self.counters["deliveries"] += 1
        self.counters["duplicates"] += plan.offset
        return {"acked_seq": session.next_seq, "applied": len(fresh) if counted else 0,
                "ignored": 0 if counted else len(fresh)}

    def deliver(self, session_id: str, seq: int, events: Sequence[Event]) -> dict[str, int]:
        """Check and apply a delivery (replay, and callers that need no durability)."""
        return self.apply_delivery(self.plan_delivery(session_id, seq, events))

    def _count(self, fresh: Sequence[Event], counted: bool) -> None:
        records = record_count(fresh)  # a block is one event of the sequence and stands for its records
        self.events_since_image += records
        if not counted:
            self.counters["ignored"] += len(fresh)
            return
        self.counters["events"] += len(fresh)
        self.counters["records"] += records
        self.counters["samples"] += sum(e.batch_size for e in fresh if isinstance(e, BatchEvent | BatchBlock))

    def _judge(self, first: int, rank: int, fresh: Sequence[Event]) -> None:
        """Alerts of what the delivery emitted and of its ranks' non-finite reports."""
        self.alerts.seen(rank)
        for event in fresh:
            scalars = [s for _, s in event.scalars] if isinstance(event, BatchBlock) else [event]
            for scalar in scalars:
                if isinstance(scalar, ScalarEvent):
                    self.new_alerts += self.alerts.observe_scalars(rank, scalar.kind, scalar.step, scalar.values)
        self._judge_emissions(self.state.outbox[first:])

    def _judge_emissions(self, emissions: Sequence[Emission]) -> None:
        for emission in emissions:
            if emission.group == "console":  # the same values again, at the console's pace
                continue
            directions = {k: m.direction for k, m in emission.metrics.items()}
            self.new_alerts += self.alerts.observe(emission.step, emission.values, directions)

    def seen(self, rank: int, at: float | None) -> None:
        """A session or delivery of ``rank`` arrived at wall time ``at`` (journaled by the runtime)."""
        if at is not None:
            self.updated_at = self.last_seen[rank] = at

    def record_alert(self, alert: Alert) -> None:
        """Keep an alert the runtime decided and journaled (a stall)."""
        self.alerts.record(alert)
        self.new_alerts.append(alert)

    def _rolled_back(self, snapshot_id: str) -> None:
        step = self.state.watermark
        self.markers.append({"kind": "restore", "step": step, "id": snapshot_id})
        self.new_alerts += self.alerts.restored(step, snapshot_id)

    def _keep_checkpoints(self) -> None:
        for checkpoint_id, state in self.state.cuts.drain_taken():
            self.checkpoints[checkpoint_id] = make_snapshot(self.spec, state, checkpoint_id)
            self.new_checkpoints.append(checkpoint_id)
            self.markers.append({"kind": "checkpoint", "step": int(state["watermark"]), "id": checkpoint_id})
            while len(self.checkpoints) > MAX_CHECKPOINTS_IN_MEMORY:
                self.checkpoints.popitem(last=False)

    # ------------------------------------------------------------ snapshots

    def checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        """The snapshot of checkpoint ``checkpoint_id``, or CheckpointPending naming missing ranks."""
        found = self.checkpoints.get(checkpoint_id)
        if found is None:
            missing = self.state.cuts.missing(checkpoint_id, self.spec.world_size)
            raise CheckpointPending(f"checkpoint {checkpoint_id!r}: waiting for the markers of ranks {missing}",
                                    missing)
        return found

    def snapshot(self) -> dict[str, Any]:
        """A snapshot cut at every rank's current applied position."""
        return make_snapshot(self.spec, self.state.to_dict())

    def check_restore(self, session_id: str, snapshot: Mapping[str, Any]) -> RunState:
        """Validate a snapshot against this run (changes nothing); returns its state."""
        self.sessions.get(session_id)
        return open_snapshot(snapshot, self.spec)

    def restore(self, session_id: str, snapshot: Mapping[str, Any], state: RunState | None = None) -> dict[str, Any]:
        """Roll back to the snapshot's cut, or join its generation if it is the current one.

        ``state`` is what ``check_restore`` returned (opened again when not given).
        """
        state = state if state is not None else self.check_restore(session_id, snapshot)
        session = self.sessions.get(session_id)
        snapshot_id = str(snapshot["snapshot_id"])
        if snapshot_id != self.generation:
            self.generation, self.base = snapshot_id, dict(snapshot)
            self._reset(state)
            self.counters["restores"] += 1
            self._rolled_back(snapshot_id)
        session.restore_id = snapshot_id
        return {"restored": True, "snapshot_id": snapshot_id, "cut": snapshot["cut"]}

    def _reset(self, state: RunState) -> None:
        state.book.max_points = self.state.book.max_points
        self.state = state
        for session in self.sessions.sessions.values():
            session.restore_id = None
            session.applied = 0

    # ------------------------------------------------------------ finish

    def finish(self) -> dict[str, float]:
        """Close windows and epochs and write the final summary (idempotent)."""
        if not self.state.finished:
            first = len(self.state.outbox)
            self.state.finish()
            self._judge_emissions(self.state.outbox[first:])
        return self.state.book.best_values()

    # ------------------------------------------------------------ recovery images

    def image(self) -> dict[str, Any]:
        """Everything needed to rebuild the run without its journal (msgpack-safe)."""
        return {
            "spec": self.spec.to_dict(), "state": self.state.to_dict(internal=True),
            "sessions": self.sessions.to_dict(), "generation": self.generation,
            "counters": dict(self.counters), "checkpoint_ids": list(self.checkpoints),
            "alerts": self.alerts.to_dict(), "markers": list(self.markers), "created_at": self.created_at,
            "updated_at": self.updated_at, "last_seen": {str(r): t for r, t in self.last_seen.items()},
        }

    @classmethod
    def from_image(cls, spec: RunSpec, image: Mapping[str, Any], base: dict[str, Any] | None,
                   checkpoints: Mapping[str, dict[str, Any]]) -> Run:
        """Inverse of ``image`` (the base and checkpoints come from the store's blobs)."""
        run = cls(spec, RunState.from_dict(spec, image["state"]), SessionTable.from_dict(image["sessions"]))
        run.generation, run.base = image["generation"], base
        run.counters.update(image["counters"])
        run.checkpoints.update(checkpoints)
        run.alerts = AlertBook.from_dict(run.alerts.rules, image.get("alerts", {}))
        run.markers = [dict(m) for m in image.get("markers", [])]
        run.created_at, run.updated_at = image.get("created_at"), image.get("updated_at")
        run.last_seen = {int(r): float(t) for r, t in image.get("last_seen", {}).items()}
        return run
