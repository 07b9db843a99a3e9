"""The state machine of one run: per-rank completion, pending steps, windows, epochs, best.

Events of a rank are first checked (``check``), which never mutates, and then applied
(``apply``), which never fails. A train step's records wait in a pending bucket until
every rank has completed that step (DESIGN §3b); the global watermark then moves and
the steps up to it are folded into the open windows in step order, firing the schedule's
groups as they pass. Epochs close when every rank has ended them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client._wire import (
    SCALAR_KINDS,
    TRAIN_PHASE,
    BatchEvent,
    CheckpointEvent,
    CompleteEvent,
    EndEpochEvent,
    Event,
    ScalarEvent,
    WireError,
    check_batches_against,
    decode_event,
    encode_event,
)
from service.core.cuts import Cuts
from service.core.emission import Emission
from service.core.errors import InvalidInput, RunFinished, StepAlreadyCompleted
from service.core.metrics_book import MetricsBook
from service.core.naming import metric_key
from service.core.scalars import ScalarTable
from service.core.schedule import Schedule
from service.core.spec import RunSpec
from service.core.state import NULL_FAMILY, Accumulator, Layout, Metrics

WINDOW_GROUPS = ("step", "wandb", "console")
FIRE_ORDER = ("step", "wandb", "console", "lr", "pipeline")


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
        self.completed = max(self.completed, step - 1)
        self.last_step = max(self.last_step, step)


@dataclass
class StepBucket:
    """Records of one train step waiting for every rank to complete it."""

    acc: Accumulator | None = None
    scalars: dict[str, ScalarTable] = field(default_factory=dict)


@dataclass
class Window:
    """An open window of a windowed group."""

    acc: Accumulator
    last_fire: int = 0
    prev_t_max: float = -math.inf


class RunState:
    """Everything the service knows of one run, fed by validated events."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.schedule: Schedule = spec.schedule()
        self.layout = Layout(spec.tasks, spec.subsets)
        self.ranks = [RankState() for _ in range(spec.world_size)]
        self.accepted = [RankState() for _ in range(spec.world_size)]
        self.cuts = Cuts()
        self.watermark = -1
        self.pending: dict[int, StepBucket] = {}
        self.windows = {g: Window(Accumulator(self.layout)) for g in WINDOW_GROUPS}
        self.since: dict[str, int | None] = {}
        self.epochs: dict[tuple[str, int], Accumulator] = {}
        self.current = {"lr": ScalarTable(), "pipeline": ScalarTable()}
        self.higher_is_better: dict[str, bool] = {}
        self.book = MetricsBook()
        self.finished = False
        self.outbox: list[Emission] = []
        self._deltas: dict[int, Accumulator] = {}  # batches of the delivery being applied, computed together

    # ------------------------------------------------------------ check (no mutation)

    def check(self, rank: int, events: Sequence[Event]) -> None:
        """Raise if any event is invalid for this run and rank; changes nothing."""
        if self.finished:
            raise RunFinished(f"run {self.spec.run_id!r} is finished and takes no more events")
        batches = [(e, f"events[{i}]") for i, e in enumerate(events) if isinstance(e, BatchEvent)]
        try:
            check_batches_against([b for b, _ in batches], self.spec.tasks, [w for _, w in batches])
        except WireError as exc:
            raise InvalidInput(str(exc)) from exc
        state = self.accepted[rank].copy()
        for i, event in enumerate(events):
            self._check_one(state, event, f"events[{i}]")
            _advance_rank(state, event)

    def _check_one(self, state: RankState, event: Event, where: str) -> None:
        if isinstance(event, BatchEvent):
            self._check_batch(state, event, where)
        elif isinstance(event, ScalarEvent):
            _check_step(state, event.step, where)
            self._check_directions(event, where)

    def _check_batch(self, state: RankState, batch: BatchEvent, where: str) -> None:
        if NULL_FAMILY in batch.subsets:
            raise InvalidInput(f"{where}.subsets: the family name {NULL_FAMILY!r} is reserved")
        if batch.epoch in state.ended.get(batch.phase, ()):
            raise StepAlreadyCompleted(
                f"{where}.epoch: this rank already ended {batch.phase} epoch {batch.epoch}"
            )
        if batch.phase == TRAIN_PHASE:
            _check_step(state, batch.step, where)

    def _check_directions(self, event: ScalarEvent, where: str) -> None:
        for name, higher in event.higher_is_better.items():
            known = self.higher_is_better.get(name)
            if known is not None and known != higher:
                raise InvalidInput(
                    f"{where}.higher_is_better.{name}: was declared {known}, now {higher}"
                )

    # ------------------------------------------------------------ apply

    def apply(self, rank: int, events: Iterable[Event]) -> None:
        """Apply checked events of ``rank`` in order; emissions go to ``outbox``.

        After its checkpoint marker a rank's events are held (DESIGN §3b) until every
        rank's marker is in; the snapshot is then taken and the held events applied in
        the order they arrived.
        """
        events = list(events)
        self._deltas = self._precompute(rank, events)
        try:
            for event in events:
                _advance_rank(self.accepted[rank], event)
                self._route(rank, event)
        finally:
            self._deltas = {}
        self._advance()

    def _precompute(self, rank: int, events: list[Event]) -> dict[int, Accumulator]:
        """The statistics of the delivery's batches up to its first checkpoint marker, in one pass.

        Batches after a marker may be held (DESIGN §3b); they are computed when applied, so a
        cut never sees a label first used after it.
        """
        if self.cuts.holds(rank):
            return {}
        batches = []
        for event in events:
            if isinstance(event, CheckpointEvent):
                break
            if isinstance(event, BatchEvent):
                batches.append(event)
        if not batches:
            return {}
        return {id(b): acc for b, acc in zip(batches, Accumulator.of_batches(self.layout, batches), strict=True)}

    def _route(self, rank: int, event: Event) -> None:
        if self.cuts.holds(rank):
            self.cuts.hold(rank, event)
            return
        self._apply_one(rank, event)
        if isinstance(event, CheckpointEvent) and self.cuts.mark(rank, event.id, len(self.ranks)):
            self._advance()
            self.cuts.taken.append((event.id, self.to_dict()))
            for held_rank, held in self.cuts.release(event.id):
                self._route(held_rank, held)

    def _apply_one(self, rank: int, event: Event) -> None:
        state = self.ranks[rank]
        if isinstance(event, BatchEvent):
            self._apply_batch(event)
        elif isinstance(event, ScalarEvent):
            bucket = self.pending.setdefault(event.step, StepBucket())
            bucket.scalars.setdefault(event.kind, ScalarTable()).set(rank, event.values)
            self.higher_is_better.update(event.higher_is_better)
        _advance_rank(state, event)
        if isinstance(event, EndEpochEvent):
            self._advance()
            self._maybe_close_epoch(event.phase, event.epoch)

    def _apply_batch(self, batch: BatchEvent) -> None:
        delta = self._deltas.pop(id(batch), None) or Accumulator.of_batches(self.layout, [batch])[0]
        self.epochs.setdefault((batch.phase, batch.epoch), Accumulator(self.layout)).merge(delta)
        if batch.phase == TRAIN_PHASE:
            bucket = self.pending.setdefault(batch.step, StepBucket())
            if bucket.acc is None:
                bucket.acc = delta
            else:
                bucket.acc.merge(delta)

    # ------------------------------------------------------------ watermark and schedule

    def _advance(self) -> None:
        """Fold the steps every rank has completed, in step order, firing groups on the way.

        Work is proportional to the steps that hold data, never to the distance covered: a
        group fires at the first firing step at or after the first data it has not emitted
        (an empty window or an unchanged scalar has nothing to say).
        """
        target = min(r.completed for r in self.ranks)
        if target <= self.watermark:
            return
        for step in sorted(s for s in self.pending if self.watermark < s <= target):
            self._fire_through(step - 1)
            self._fold(step)
        self._fire_through(target)
        self.watermark = target

    def _fire_through(self, last: int) -> None:
        due = []
        for order, group in enumerate(FIRE_ORDER):
            first = self.since.get(group)
            fire_at = None if first is None else self.schedule.next_firing(group, first)
            if fire_at is not None and fire_at <= last:
                due.append((fire_at, order, group))
        for fire_at, _, group in sorted(due):
            self.since[group] = None
            self._fire(group, fire_at)

    def _fold(self, step: int) -> None:
        bucket = self.pending.pop(step, None)
        if bucket is None:
            return
        if bucket.acc is not None:
            for group, window in self.windows.items():
                window.acc.merge(bucket.acc)
                self._mark(group, step)
        for kind, table in bucket.scalars.items():
            if kind in self.current:
                self.current[kind].update(table)
                self._mark(kind, step)
            else:
                self._emit_scalars(kind, step, table)

    def _mark(self, group: str, step: int) -> None:
        if self.since.get(group) is None:
            self.since[group] = step

    def _fire(self, group: str, step: int) -> None:
        if group in self.current:
            self._emit_scalars(group, step, self.current[group])
        elif group == "step":
            self._fire_window("step", step, "step")
        elif group == "wandb":
            self._fire_wandb(step)
        else:
            self._fire_window("console", step, "step", global_only=True)

    def _emit_scalars(self, kind: str, step: int, table: ScalarTable) -> None:
        means = table.means()
        if not means:
            return
        values = {metric_key(kind, name): value for name, value in means.items()}
        self._emit(step, kind, values)
        if kind == "custom":
            for name, value in means.items():
                if name in self.higher_is_better:
                    self.book.offer_best(metric_key("final", name, phase="custom"), value,
                                         self.higher_is_better[name])

    def _fire_window(self, group: str, step: int, window: str, global_only: bool = False) -> None:
        state = self.windows[group]
        if state.acc.n == 0:
            return
        values = _keys(state.acc.compute(), TRAIN_PHASE, window, global_only)
        values.update(self._rates(state, step))
        self._emit(step, group, values)
        self._reset(state, step)

    def _fire_wandb(self, step: int) -> None:
        state = self.windows["wandb"]
        if state.acc.n == 0:
            return
        metrics = state.acc.compute()
        values = _keys(metrics, TRAIN_PHASE, "step_avg", global_only=True)
        values.update(self._core_keys(metrics, step))
        self._emit(step, "wandb", values)
        self._reset(state, step)

    def _core_keys(self, train: Metrics, step: int) -> dict[str, float]:
        out = {metric_key("core", "global_step"): float(step)}
        pairs = (("train_loss", "loss"), ("train_chain_acc", "chain_accuracy"),
                 ("train_partial_chain_acc", "partial_chain_accuracy"))
        out.update({metric_key("core", k): train[(None, None, s)] for k, s in pairs if (None, None, s) in train})
        for core_name, suffix in (("val_loss", "loss"), ("val_chain_acc", "chain_accuracy"),
                                  ("val_partial_chain_acc", "partial_chain_accuracy")):
            source = metric_key("window", suffix, phase="val", window="epoch")
            self._copy_latest(out, metric_key("core", core_name), source)
        for task in self.spec.task_names:
            self._copy_latest(out, metric_key("core", "val_acc1", task=task),
                              metric_key("window", f"acc1_{task}", phase="val", window="epoch"))
        return out

    def _copy_latest(self, out: dict[str, float], key: str, source: str) -> None:
        latest = self.book.latest.get(source)
        if latest is not None:
            out[key] = latest[0]

    def _rates(self, state: Window, step: int) -> dict[str, float]:
        start = state.prev_t_max if math.isfinite(state.prev_t_max) else state.acc.t_min
        elapsed = state.acc.t_max - start
        if elapsed <= 0:
            return {}
        steps = step - state.last_fire
        remaining = max(0, self.spec.total_steps - step)
        return {
            metric_key("window", "samples_per_sec"): state.acc.n / elapsed,
            metric_key("window", "eta_sec"): remaining * elapsed / steps if steps > 0 else 0.0,
        }

    def _reset(self, state: Window, step: int) -> None:
        state.prev_t_max = state.acc.t_max
        state.last_fire = step
        state.acc = Accumulator(self.layout)

    # ------------------------------------------------------------ epochs and finish

    def _maybe_close_epoch(self, phase: str, epoch: int) -> None:
        if all(epoch in r.ended.get(phase, ()) for r in self.ranks):
            acc = self.epochs.pop((phase, epoch), None)
            if acc is not None and acc.n:
                self._emit_epoch(phase, acc)

    def _emit_epoch(self, phase: str, acc: Accumulator) -> None:
        metrics = acc.compute()
        values = _keys(metrics, phase, "epoch", global_only=False)
        duration = acc.t_max - acc.t_min
        values[metric_key("window", "epoch_duration_sec", phase=phase, window="epoch")] = duration
        if duration > 0:
            values[metric_key("window", "avg_samples_per_sec", phase=phase, window="epoch")] = acc.n / duration
        self._emit(max(acc.max_step, 0), "epoch", values)
        for (family, _, suffix), value in metrics.items():
            if family is None:
                self.book.offer_best(metric_key("final", suffix, phase=phase), value,
                                     not suffix.startswith("loss"))

    def finish(self) -> None:
        """Complete every rank, close open windows and epochs, emit the final summary."""
        if self.finished:
            return
        top = max(r.last_step for r in self.ranks)
        for rank in self.ranks:
            rank.completed = max(rank.completed, top)
        self._advance()
        last = max(self.watermark, 0)
        for group in WINDOW_GROUPS:  # the windows still open close at the last step
            if self.since.get(group) is not None and self.schedule.intervals[group]:
                self.since[group] = None
                self._fire(group, last)
        for (phase, _), acc in sorted(self.epochs.items()):
            if acc.n:
                self._emit_epoch(phase, acc)
        self.epochs.clear()
        self.finished = True
        self.outbox.append(Emission(self.spec.run_id, last, "final", dict(self.book.best_values())))

    # ------------------------------------------------------------ output

    def _emit(self, step: int, group: str, values: dict[str, float]) -> None:
        # a rate over a (client-reported) near-zero time span can overflow: report nothing rather than inf
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        emission = Emission(self.spec.run_id, step, group, values)
        if group != "console":
            self.book.record(step, values)
        self.outbox.append(emission)

    def drain(self) -> list[Emission]:
        """Take the emissions produced since the last drain."""
        out, self.outbox = self.outbox, []
        return out

    # ------------------------------------------------------------ serialisation

    def cut(self) -> dict[str, Any]:
        """Every rank's applied position."""
        return {"watermark": self.watermark,
                "ranks": [{"rank": i, "completed": r.completed, "last_step": r.last_step}
                          for i, r in enumerate(self.ranks)]}

    def to_dict(self, internal: bool = False) -> dict[str, Any]:
        """The state at the applied cut (JSON-safe). ``internal`` adds markers and held
        events (binary-encoded, msgpack only) for the service's own recovery images."""
        out: dict[str, Any] = {
            "layout": self.layout.to_dict(),
            "ranks": [_rank_to_dict(r) for r in self.ranks],
            "watermark": self.watermark,
            "pending": [[step, None if b.acc is None else b.acc.to_dict(),
                         {k: t.to_dict() for k, t in b.scalars.items()}] for step, b in sorted(self.pending.items())],
            "since": dict(self.since),
            "windows": {g: {"acc": w.acc.to_dict(), "last_fire": w.last_fire,
                            "prev_t_max": w.prev_t_max if math.isfinite(w.prev_t_max) else None}
                        for g, w in self.windows.items()},
            "epochs": [[phase, epoch, acc.to_dict()] for (phase, epoch), acc in sorted(self.epochs.items())],
            "current": {k: t.to_dict() for k, t in self.current.items()},
            "higher_is_better": dict(self.higher_is_better),
            "book": self.book.to_dict(),
            "finished": self.finished,
        }
        if internal:
            out["internal"] = {
                "accepted": [_rank_to_dict(r) for r in self.accepted],
                "markers": {c: sorted(r) for c, r in self.cuts.markers.items()},
                "waiting": [[r, c] for r, c in self.cuts.waiting.items()],
                "held": [[r, encode_event(e, binary=True)] for r, e in self.cuts.held],
            }
        return out

    @classmethod
    def from_dict(cls, spec: RunSpec, data: Mapping[str, Any]) -> RunState:
        """Inverse of ``to_dict`` (a state without ``internal`` resumes at its cut)."""
        state = cls(spec)
        state.layout = Layout(spec.tasks, data["layout"])
        layout = state.layout
        state.ranks = [_rank_from_dict(r) for r in data["ranks"]]
        state.watermark = int(data["watermark"])
        state.pending = {int(step): StepBucket(None if acc is None else Accumulator.from_dict(layout, acc),
                                               {k: ScalarTable(_ranks_in(t)) for k, t in scalars.items()})
                         for step, acc, scalars in data["pending"]}
        state.since = {str(g): None if s is None else int(s) for g, s in data["since"].items()}
        state.windows = {g: Window(Accumulator.from_dict(layout, w["acc"]), int(w["last_fire"]),
                                   -math.inf if w["prev_t_max"] is None else float(w["prev_t_max"]))
                         for g, w in data["windows"].items()}
        state.epochs = {(p, int(e)): Accumulator.from_dict(layout, acc) for p, e, acc in data["epochs"]}
        state.current = {k: ScalarTable(_ranks_in(t)) for k, t in data["current"].items()}
        state.higher_is_better = {k: bool(v) for k, v in data["higher_is_better"].items()}
        state.book = MetricsBook.from_dict(data["book"])
        state.finished = bool(data["finished"])
        state._load_internal(data.get("internal"))
        state._check()
        return state

    def _check(self) -> None:
        """Raise ValueError unless the state fits its spec (states may come from outside)."""
        if len(self.ranks) != self.spec.world_size or len(self.accepted) != self.spec.world_size:
            raise ValueError(f"ranks: expected {self.spec.world_size} ranks, got {len(self.ranks)}")
        if set(self.windows) != set(WINDOW_GROUPS) or not set(self.since) <= set(FIRE_ORDER):
            raise ValueError("windows: unknown or missing window groups")
        if not set(self.current) <= {"lr", "pipeline"}:
            raise ValueError(f"current: unknown scalar kinds {sorted(self.current)}")
        for step, bucket in self.pending.items():
            if not set(bucket.scalars) <= set(SCALAR_KINDS):
                raise ValueError(f"pending step {step}: unknown scalar kinds {sorted(bucket.scalars)}")
        accumulators = [w.acc for w in self.windows.values()] + list(self.epochs.values())
        accumulators += [b.acc for b in self.pending.values() if b.acc is not None]
        for acc in accumulators:
            acc.check()

    def _load_internal(self, internal: Mapping[str, Any] | None) -> None:
        if internal is None:
            self.accepted = [r.copy() for r in self.ranks]
            return
        self.accepted = [_rank_from_dict(r) for r in internal["accepted"]]
        self.cuts.markers = {c: set(r) for c, r in internal["markers"].items()}
        self.cuts.waiting = {int(r): c for r, c in internal["waiting"]}
        self.cuts.held = [(int(r), decode_event(e)) for r, e in internal["held"]]


def _rank_to_dict(rank: RankState) -> dict[str, Any]:
    return {"completed": rank.completed, "last_step": rank.last_step,
            "ended": {p: sorted(e) for p, e in rank.ended.items()}}


def _rank_from_dict(data: Mapping[str, Any]) -> RankState:
    return RankState(int(data["completed"]), int(data["last_step"]),
                     {p: {int(e) for e in v} for p, v in data["ended"].items()})


def _ranks_in(table: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    return {int(r): {k: float(v) for k, v in values.items()} for r, values in table.items()}


def _check_step(state: RankState, step: int, where: str) -> None:
    if step <= state.completed:
        raise StepAlreadyCompleted(
            f"{where}.step: step {step} was already completed by this rank (completed through {state.completed})"
        )


def _advance_rank(state: RankState, event: Event) -> None:
    if (isinstance(event, BatchEvent) and event.phase == TRAIN_PHASE) or isinstance(event, ScalarEvent):
        state.see_step(event.step)
    elif isinstance(event, EndEpochEvent):
        state.ended.setdefault(event.phase, set()).add(event.epoch)
        if event.phase == TRAIN_PHASE:
            state.completed = max(state.completed, state.last_step)
    elif isinstance(event, CompleteEvent):
        state.completed = max(state.completed, event.through_step)


def _keys(metrics: Metrics, phase: str, window: str, global_only: bool) -> dict[str, float]:
    return {
        metric_key("window", suffix, phase=phase, window=window, family=family, label=label): value
        for (family, label, suffix), value in metrics.items()
        if family is None or not global_only
    }
