"""A run state to and from its JSON-safe form (snapshots and recovery images).

States may come from outside (a snapshot posted by a client), so ``state_from_dict``
checks that what it built fits the run's spec before anyone uses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from client._wire import SCALAR_KINDS, decode_event, encode_event
from service.core.buckets import FIRE_ORDER, WINDOW_GROUPS, StepBucket, Window
from service.core.emission import MetricId
from service.core.metrics_book import MetricsBook
from service.core.ranks import RankState
from service.core.scalars import ScalarTable
from service.core.state import Accumulator, Layout

if TYPE_CHECKING:
    from service.core.run_state import RunState


def state_to_dict(state: RunState, internal: bool) -> dict[str, Any]:
    """The state at the applied cut; ``internal`` adds markers and held events."""
    out: dict[str, Any] = {
        "layout": state.layout.to_dict(),
        "ranks": [r.to_dict() for r in state.ranks],
        "watermark": state.watermark,
        "pending": [[step, None if b.acc is None else b.acc.to_dict(),
                     {k: t.to_dict() for k, t in b.scalars.items()}] for step, b in sorted(state.pending.items())],
        "since": dict(state.since),
        "windows": {g: {"acc": w.acc.to_dict(), "last_fire": w.last_fire,
                        "prev_t_max": w.prev_t_max if math.isfinite(w.prev_t_max) else None}
                    for g, w in state.windows.items()},
        "epochs": [[phase, epoch, acc.to_dict()] for (phase, epoch), acc in sorted(state.epochs.items())],
        "current": {k: t.to_dict() for k, t in state.current.items()},
        "higher_is_better": dict(state.higher_is_better),
        "book": state.book.to_dict(binary=internal),
        "finished": state.finished,
        "last_window": None if state.last_window is None else [
            state.last_window[0], {k: [v, m.to_dict()] for k, (m, v) in state.last_window[1].items()}],
    }
    if internal:
        out["internal"] = {
            "accepted": [r.to_dict() for r in state.accepted],
            "markers": {c: sorted(r) for c, r in state.cuts.markers.items()},
            "waiting": [[r, c] for r, c in state.cuts.waiting.items()],
            "held": [[r, encode_event(e, binary=True)] for r, e in state.cuts.held],
        }
    return out


def state_from_dict(state: RunState, data: Mapping[str, Any]) -> RunState:
    """Fill the fresh ``state`` from ``data`` (inverse of ``state_to_dict``); raises ValueError
    (or KeyError/TypeError on a malformed document) unless it fits the spec."""
    state.layout = layout = Layout(state.spec.tasks, data["layout"])
    state.ranks = [RankState.from_dict(r) for r in data["ranks"]]
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
    last = data.get("last_window")  # absent in snapshots written before wandb rows carried windows
    state.last_window = None if last is None else (
        int(last[0]), {str(k): (MetricId.from_dict(str(k), m), float(v)) for k, (v, m) in last[1].items()})
    _load_internal(state, data.get("internal"))
    _check(state)
    return state


def _check(state: RunState) -> None:
    """Raise ValueError unless the state fits its spec."""
    world = state.spec.world_size
    if len(state.ranks) != world or len(state.accepted) != world:
        raise ValueError(f"ranks: expected {world} ranks, got {len(state.ranks)}")
    if set(state.windows) != set(WINDOW_GROUPS) or not set(state.since) <= set(FIRE_ORDER):
        raise ValueError("windows: unknown or missing window groups")
    if not set(state.current) <= {"lr", "pipeline"}:
        raise ValueError(f"current: unknown scalar kinds {sorted(state.current)}")
    for step, bucket in state.pending.items():
        if not set(bucket.scalars) <= set(SCALAR_KINDS):
            raise ValueError(f"pending step {step}: unknown scalar kinds {sorted(bucket.scalars)}")
    accumulators = [w.acc for w in state.windows.values()] + list(state.epochs.values())
    accumulators += [b.acc for b in state.pending.values() if b.acc is not None]
    for acc in accumulators:
        acc.check()


def _load_internal(state: RunState, internal: Mapping[str, Any] | None) -> None:
    if internal is None:
        state.accepted = [r.copy() for r in state.ranks]
        return
    state.accepted = [RankState.from_dict(r) for r in internal["accepted"]]
    state.cuts.markers = {c: set(r) for c, r in internal["markers"].items()}
    state.cuts.waiting = {int(r): c for r, c in internal["waiting"]}
    state.cuts.held = [(int(r), decode_event(e)) for r, e in internal["held"]]


def _ranks_in(table: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    return {int(r): {k: float(v) for k, v in values.items()} for r, values in table.items()}
