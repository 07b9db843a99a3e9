"""Read-only views of a run for the API: copied under the run lock, formatted outside it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.core.emission import MetricId
from service.core.run_commands import Run


def short_info(run: Run) -> dict[str, Any]:
    """The run's line in ``GET /v1/runs`` (caller holds the run lock); times are Unix seconds."""
    return {"run_id": run.spec.run_id, "status": "finished" if run.state.finished else "active",
            "watermark": run.state.watermark, "step": run.state.watermark, "world_size": run.spec.world_size,
            "created_at": run.created_at, "updated_at": run.updated_at, "alerts": len(run.alerts.fired)}


def full_info(run: Run) -> dict[str, Any]:
    """``GET /v1/runs/{run}`` without the sinks (caller holds the run lock)."""
    info = short_info(run)
    info.update(run.spec.to_dict())
    info["schedule"] = dict(run.state.schedule.intervals)
    info["schedule_source"] = run.state.schedule.source
    info["ranks"] = rank_info(run)
    info["missing_ranks"] = missing_ranks(run)
    if info["missing_ranks"]:
        info["note"] = missing_note(run, info["missing_ranks"])
    info["counters"] = dict(run.counters)
    info["generation"] = run.generation
    info["checkpoints"] = list(run.checkpoints)
    info["markers"] = [dict(m) for m in run.markers]
    info["alerts"] = [a.to_dict() for a in run.alerts.fired]
    return info


def missing_ranks(run: Run) -> list[int]:
    """Ranks that never opened a session: every step window waits for them (caller holds the lock)."""
    joined = {s.rank for s in run.sessions.sessions.values()}
    return [r for r in range(run.spec.world_size) if r not in joined]


def missing_note(run: Run, missing: list[int]) -> str:
    """Why a run shows no step metrics, for the run's info and the log."""
    return (f"ranks {missing} of {run.spec.world_size} never opened a session of run {run.spec.run_id!r}: "
            "step windows and epochs wait for every rank (were those ranks started with another run id?)")


def rank_info(run: Run) -> list[dict[str, Any]]:
    """Each rank's position, live session, last delivery (Unix seconds), lag behind the
    fastest rank (completed steps) and fenced sessions."""
    live = run.sessions.live()
    lags = rank_lags(run)
    fenced = [0] * run.spec.world_size
    for session in run.sessions.sessions.values():
        fenced[session.rank] += session.fenced
    return [{"rank": i, "completed": r.completed, "last_step": r.last_step,
             "session": live[i].id if i in live else None, "next_seq": live[i].next_seq if i in live else 0,
             "last_seen": run.last_seen.get(i), "lag": lags[i], "fenced_sessions": fenced[i]}
            for i, r in enumerate(run.state.ranks)]


def rank_lags(run: Run) -> dict[int, int]:
    """Steps each rank's completed position is behind the furthest rank's."""
    fastest = max(r.completed for r in run.state.ranks)
    return {i: fastest - r.completed for i, r in enumerate(run.state.ranks)}


def export_figures(run: Run) -> dict[str, Any]:
    """What ``/metrics`` exports of a run (caller holds the run lock)."""
    core = {k: v for k, (v, _) in run.state.book.latest.items() if k.startswith("core/")}
    return {"run_id": run.spec.run_id, "step": run.state.watermark, "core": core, "lags": rank_lags(run),
            "alerts": len(run.alerts.fired)}


def latest(run: Run) -> dict[str, Any]:
    """Latest value of every key (caller holds the run lock)."""
    book = run.state.book
    return {"run_id": run.spec.run_id, "step": run.state.watermark,
            "metrics": {k: {"value": v, "step": s, "metric": _identity(book.ids.get(k))}
                        for k, (v, s) in sorted(book.latest.items())}}


def copy_history(run: Run, keys: Sequence[str] | None) -> dict[str, tuple[list[int], list[float], Any]]:
    """The requested series with their identities, copied (caller holds the run lock)."""
    book = run.state.book
    wanted = sorted(book.history) if keys is None else [k for k in keys if k in book.history]
    return {k: (list(book.history[k][0]), list(book.history[k][1]), _identity(book.ids.get(k))) for k in wanted}


def _identity(metric: MetricId | None) -> dict[str, Any] | None:
    return None if metric is None else metric.to_dict()


def series(steps: list[int], values: list[float], since_step: int | None,
           max_points: int | None) -> dict[str, list[Any]]:
    """One series from ``since_step`` on, thinned evenly to at most ``max_points`` (newest kept)."""
    if since_step is not None:
        keep = [i for i, s in enumerate(steps) if s >= since_step]
        steps, values = [steps[i] for i in keep], [values[i] for i in keep]
    if max_points is not None and len(steps) > max_points:
        stride = -(-len(steps) // max_points)
        picks = sorted(range(len(steps) - 1, -1, -stride))[-max_points:]
        steps, values = [steps[i] for i in picks], [values[i] for i in picks]
    return {"steps": steps, "values": values}
