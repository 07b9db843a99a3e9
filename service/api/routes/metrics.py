"""Reading metrics: latest values, history, summary.

Reads take the run's lock, which an ingest may hold for a moment: they run in worker
threads so that a busy run never stalls the event loop (and every other run with it).
"""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query

from service.api.deps import HostDep
from service.api.schemas import ERRORS

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["metrics"], responses=ERRORS)


@router.get("/metrics")
async def latest_metrics(run_id: str, host: HostDep) -> dict[str, Any]:
    """Latest value of every key: ``{"run_id", "step", "metrics": {key: {"value", "step", "metric"}}}``.

    ``metric`` is the key's identity (kind, statistic, phase, window, task, family, label,
    direction), or null for a value recorded before identities were kept.
    """
    return await to_thread.run_sync(host.metrics, run_id)


@router.get("/history")
async def history(
    run_id: str,
    host: HostDep,
    keys: Annotated[str | None, Query(max_length=65_536, description="comma-separated keys; all when absent")] = None,
    since_step: Annotated[int | None, Query(ge=0)] = None,
    max_points: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
) -> dict[str, Any]:
    """Series of the requested keys: ``{"series": {key: {"steps", "values", "metric"}}}``."""
    wanted = [k for k in keys.split(",") if k] if keys is not None else None
    return await to_thread.run_sync(host.history, run_id, wanted, since_step, max_points)


@router.get("/summary")
async def summary(run_id: str, host: HostDep) -> dict[str, Any]:
    """Best values so far; the final ones once the run is finished."""
    return await to_thread.run_sync(host.summary, run_id)
