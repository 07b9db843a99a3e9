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
from typing import Any

from client._errors import InvalidValue
from client._rules import check_vocabulary
from client._wire import (
    TRAIN_PHASE,
    BatchBlock,
    BatchEvent,
    CheckpointEvent,
    EndEpochEvent,
    Event,
    ScalarEvent,
    WireError,
    check_batches_against,
    logical_events,
)
from service.core.buckets import FIRE_ORDER, WINDOW_GROUPS, StepBucket, Window
from service.core.cuts import Cuts
from service.core.emission import Emission, MetricId
from service.core.errors import InvalidInput, RunFinished, StepAlreadyCompleted
from service.core.metrics_book import MetricsBook
from service.core.naming import core_metric, final_metric, scalar_metric, window_metric
from service.core.ranks import RankState
from service.core.run_codec import state_from_dict, state_to_dict
from service.core.scalars import ScalarTable
from service.core.schedule import Schedule
from service.core.spec import RunSpec
from service.core.state import NULL_FAMILY, Accumulator, Layout, Metrics


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
        self.last_window: tuple[int, dict[str, tuple[MetricId, float]]] | None = None  # for wandb rows
        self.final_metrics: dict[str, MetricId] = {}
        self.outbox: list[Emission] = []
        self._deltas: dict[int, Accumulator] = {}  # batches of the delivery being applied, computed together

    # ------------------------------------------------------------ check (no mutation)

    def check(self, rank: int, events: Sequence[Event]) -> RankState:
        """Raise if any event is invalid for this run and rank; changes nothing.

        Returns the rank's position after ``events`` (a new object): ``apply`` of the same
        events may take it instead of advancing the rank again, record by record.
        """
        if self.finished:
            raise RunFinished(f"run {self.spec.run_id!r} is finished and takes no more events")
        batches = [(e, f"events[{i}]") for i, e in enumerate(events) if isinstance(e, BatchEvent | BatchBlock)]
        try:
            check_batches_against([b for b, _ in batches], self.spec.tasks, [w for _, w in batches])
            check_vocabulary(*self.layout.sizes_with([b for b, _ in batches]))
        except (WireError, InvalidValue) as exc:
            raise InvalidInput(str(exc)) from exc
        state = self.accepted[rank].copy()
        for i, event in enumerate(events):
            if isinstance(event, BatchBlock):
                for j, record in enumerate(event.events()):
                    self._check_one(state, record, f"events[{i}].record[{j}]")
                    state.advance(record)
                continue
            self._check_one(state, event, f"events[{i}]")
            state.advance(event)
        return state

    def _check_one(self, state: RankState, event: Event, where: str) -> None:
        if isinstance(event, BatchEvent):
            self._check_batch(state, event, where)
        elif isinstance(event, ScalarEvent):
            state.check_step(event.step, where)
            self._check_directions(event, where)

    def _check_batch(self, state: RankState, batch: BatchEvent, where: str) -> None:
        if NULL_FAMILY in batch.subsets:
            raise InvalidInput(f"{where}.subsets: the family name {NULL_FAMILY!r} is reserved")
        if batch.epoch in state.ended.get(batch.phase, ()):
            raise StepAlreadyCompleted(
                f"{where}.epoch: this rank already ended {batch.phase} epoch {batch.epoch}"
            )
        if batch.phase == TRAIN_PHASE:
            state.check_step(batch.step, where)

    def _check_directions(self, event: ScalarEvent, where: str) -> None:
        for name, higher in event.higher_is_better.items():
            known = self.higher_is_better.get(name)
            if known is not None and known != higher:
                raise InvalidInput(
                    f"{where}.higher_is_better.{name}: was declared {known}, now {higher}"
                )

    # ------------------------------------------------------------ apply

    def apply(self, rank: int, events: Iterable[Event], checked: RankState | None = None) -> None:
        """Apply checked events of ``rank`` in order; emissions go to ``outbox``.

        After its checkpoint marker a rank's events are held (DESIGN §3b) until every
        rank's marker is in; the snapshot is then taken and the held events applied in
        the order they arrived.

        ``checked`` is what ``check`` returned for these events: the rank's accepted
        position after them (only the next check reads it; a cut does not), taken as it
        is. Without it the position advances record by record.
        """
        events = list(events)
        self._deltas = self._precompute(rank, events)
        accepted = self.accepted[rank] if checked is None else None
        try:
            for event in logical_events(events):
                if accepted is not None:
                    accepted.advance(event)
                self._route(rank, event)
        finally:
            self._deltas = {}
        if checked is not None:
            self.accepted[rank] = checked
        self._advance()

    def _precompute(self, rank: int, events: list[Event]) -> dict[int, Accumulator]:
        """The statistics of the delivery's batches up to its first checkpoint marker, in one pass
        (a block's from its columns as they are).

        Batches after a marker may be held (DESIGN §3b); they are computed when applied, so a
        cut never sees a label first used after it.
        """
        if self.cuts.holds(rank):
            return {}
        deltas: dict[int, Accumulator] = {}
        batches: list[BatchEvent] = []
        for event in [*events, None]:
            if isinstance(event, BatchEvent):
                batches.append(event)
                continue
            if not isinstance(event, BatchBlock | CheckpointEvent) and event is not None:
                continue  # scalars and control records: the batches around them are computed together
            if batches:  # before a block: new labels get their codes in the order the records came
                deltas.update(zip(map(id, batches), Accumulator.of_batches(self.layout, batches), strict=True))
                batches = []
            if not isinstance(event, BatchBlock):
                break
            deltas.update(zip(map(id, event.batches()), Accumulator.of_block(self.layout, event), strict=True))
        return deltas

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
        state.advance(event)
        if isinstance(event, EndEpochEvent):
            self._advance()
            self._maybe_close_epoch(event.phase, event.epoch)

    def _apply_batch(self, batch: BatchEvent) -> None:
        delta = self._deltas.pop(id(batch), None) or Accumulator.of_batches(self.layout, [batch])[0]
        key = (batch.phase, batch.epoch)
        epoch = self.epochs.get(key)  # not setdefault: that would build an empty accumulator every row
        if epoch is None:
            epoch = self.epochs[key] = Accumulator(self.layout)
        epoch.merge(delta)
        if batch.phase == TRAIN_PHASE:
            bucket = self.pending.get(batch.step)
            if bucket is None:
                bucket = self.pending[batch.step] = StepBucket()
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
        items = [(scalar_metric(kind, name, self.higher_is_better.get(name) if kind == "custom" else None), value)
                 for name, value in means.items()]
        self._emit(step, kind, items)
        if kind == "custom":
            for name, value in means.items():
                if name in self.higher_is_better:
                    self._offer_best(final_metric(name, "custom", self.higher_is_better[name]), value)

    def _fire_window(self, group: str, step: int, window: str, global_only: bool = False) -> None:
        state = self.windows[group]
        if state.acc.n == 0:
            return
        items = window_values(state.acc.compute(), TRAIN_PHASE, window, global_only)
        items += self._rates(state, step)
        emission = self._emit(step, group, items)
        if group == "step":
            self.last_window = (step, {k: (emission.metrics[k], v) for k, v in emission.values.items()})
        self._reset(state, step)

    def _fire_wandb(self, step: int) -> None:
        state = self.windows["wandb"]
        if state.acc.n == 0:
            return
        metrics = state.acc.compute()
        items = window_values(metrics, TRAIN_PHASE, "step_avg", global_only=True)
        items += self._core_values(metrics, step)
        carried = self.last_window[1] if self.last_window is not None and self.last_window[0] <= step else {}
        self._emit(step, "wandb", items, carried)
        self._reset(state, step)

    def _core_values(self, train: Metrics, step: int) -> list[tuple[MetricId, float]]:
        out = [(core_metric("global_step"), float(step))]
        pairs = (("train_loss", "loss"), ("train_chain_acc", "chain_accuracy"),
                 ("train_partial_chain_acc", "partial_chain_accuracy"))
        out += [(core_metric(k), train[(None, None, s)]) for k, s in pairs if (None, None, s) in train]
        for core_name, suffix in (("val_loss", "loss"), ("val_chain_acc", "chain_accuracy"),
                                  ("val_partial_chain_acc", "partial_chain_accuracy")):
            self._copy_latest(out, core_metric(core_name), window_metric(suffix, phase="val", window="epoch"))
        for task in self.spec.task_names:
            self._copy_latest(out, core_metric("val_acc1", task),
                              window_metric(f"acc1_{task}", phase="val", window="epoch"))
        return out

    def _copy_latest(self, out: list[tuple[MetricId, float]], metric: MetricId, source: MetricId) -> None:
        latest = self.book.latest.get(source.key)
        if latest is not None:
            out.append((metric, latest[0]))

    def _rates(self, state: Window, step: int) -> list[tuple[MetricId, float]]:
        start = state.prev_t_max if math.isfinite(state.prev_t_max) else state.acc.t_min
        elapsed = state.acc.t_max - start
        if elapsed <= 0:
            return []
        steps = step - state.last_fire
        remaining = max(0, self.spec.total_steps - step)
        return [
            (window_metric("samples_per_sec", phase=TRAIN_PHASE, window="step"), state.acc.n / elapsed),
            (window_metric("eta_sec", phase=TRAIN_PHASE, window="step"),
             remaining * elapsed / steps if steps > 0 else 0.0),
        ]

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
        items = window_values(metrics, phase, "epoch", global_only=False)
        duration = acc.t_max - acc.t_min
        items.append((window_metric("epoch_duration_sec", phase=phase, window="epoch"), duration))
        if duration > 0:
            items.append((window_metric("avg_samples_per_sec", phase=phase, window="epoch"), acc.n / duration))
        self._emit(max(acc.max_step, 0), "epoch", items)
        for (family, _, suffix), value in metrics.items():
            if family is None:
                self._offer_best(final_metric(suffix, phase, not suffix.startswith("loss")), value)

    def _offer_best(self, metric: MetricId, value: float) -> None:
        self.final_metrics[metric.key] = metric
        self.book.offer_best(metric.key, value, metric.direction == "max")

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
        best = self.book.best_values()
        self.outbox.append(Emission(self.spec.run_id, last, "final", best, self._final_ids(best)))

    def _final_ids(self, best: Mapping[str, float]) -> dict[str, MetricId]:
        """Identities of the final values (a state restored from an old snapshot may lack some)."""
        return {key: self.final_metrics.get(key)
                or MetricId(key, "final", key, direction="max" if self.book.best[key][1] else "min") for key in best}

    # ------------------------------------------------------------ output

    def _emit(self, step: int, group: str, items: Iterable[tuple[MetricId, float]],
              carried: Mapping[str, tuple[MetricId, float]] | None = None) -> Emission:
        # a rate over a (client-reported) near-zero time span can overflow: report nothing rather than inf
        kept = [(m, v) for m, v in items if math.isfinite(v)]
        values = {m.key: v for m, v in kept}
        metrics = {m.key: m for m, _ in kept}
        carried = carried or {}
        for key, (metric, _) in carried.items():
            metrics.setdefault(key, metric)
        emission = Emission(self.spec.run_id, step, group, values, metrics,
                            {k: v for k, (_, v) in carried.items() if k not in values})
        if group != "console":
            self.book.record(step, values, metrics)
        self.outbox.append(emission)
        return emission

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
        return state_to_dict(self, internal)

    @classmethod
    def from_dict(cls, spec: RunSpec, data: Mapping[str, Any]) -> RunState:
        """Inverse of ``to_dict`` (a state without ``internal`` resumes at its cut)."""
        return state_from_dict(cls(spec), data)


def window_values(metrics: Metrics, phase: str, window: str, global_only: bool) -> list[tuple[MetricId, float]]:
    """Window metrics with their identities (global ones only when ``global_only``)."""
    return [(window_metric(suffix, phase=phase, window=window, family=family, label=label), value)
            for (family, label, suffix), value in metrics.items() if family is None or not global_only]
