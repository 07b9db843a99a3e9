"""Runs: create, list, show, delete, finish."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Response

from service.api.deps import HostDep, SettingsDep
from service.api.schemas import ERRORS, RunCreate

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERRORS)


@router.post("", status_code=201)
async def create_run(body: RunCreate, host: HostDep, response: Response) -> dict[str, Any]:
    """Create a run (idempotent: the same spec returns the run with 200)."""
    info, created = await to_thread.run_sync(host.create_run, body.model_dump(exclude_none=True))
    if not created:
        response.status_code = 200
    return info


@router.get("")
async def list_runs(host: HostDep) -> dict[str, Any]:
    """Every run with its status."""
    return {"runs": await to_thread.run_sync(host.list_runs)}


@router.get("/{run_id}")
async def show_run(run_id: str, host: HostDep) -> dict[str, Any]:
    """A run's spec, status, per-rank watermarks, counters and sink status."""
    return await to_thread.run_sync(host.info, run_id)


@router.delete("/{run_id}")
async def delete_run(run_id: str, host: HostDep) -> dict[str, Any]:
    """Remove a run and its data."""
    await to_thread.run_sync(host.delete_run, run_id)
    return {"deleted": run_id}


@router.post("/{run_id}/finish")
async def finish_run(run_id: str, host: HostDep, settings: SettingsDep) -> dict[str, Any]:
    """Close windows and epochs, write the final summary, finish every sink's run (bounded)."""
    summary = await to_thread.run_sync(host.finish, run_id)
    sinks = await to_thread.run_sync(host.finish_sinks, run_id, summary, settings.finish_timeout_s)
    return {"run_id": run_id, "summary": summary, "sinks": sinks}
