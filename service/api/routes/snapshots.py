"""Checkpoints (consistent cuts), snapshots and restore."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Query

from service.api.deps import HostDep, SettingsDep
from service.api.schemas import ERRORS, NAME, RestoreBody
from service.core.errors import CheckpointPending

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["snapshots"], responses={**ERRORS, 408: ERRORS[409]})
POLL_S = 0.02


@router.get("/checkpoints/{checkpoint_id}")
async def checkpoint(
    run_id: str,
    checkpoint_id: Annotated[str, Path(pattern=NAME)],
    host: HostDep,
    settings: SettingsDep,
    wait_s: Annotated[float, Query(ge=0, le=3600)] = 0.0,
) -> dict[str, Any]:
    """The snapshot at checkpoint ``checkpoint_id`` once every rank's marker is in.

    Waits up to ``wait_s`` (capped by the ``checkpoint_wait_max_s`` setting), then
    answers 408 naming the missing ranks.
    """
    deadline = time.monotonic() + min(wait_s, settings.checkpoint_wait_max_s)
    while True:
        try:
            return await to_thread.run_sync(host.checkpoint, run_id, checkpoint_id)
        except CheckpointPending:
            if time.monotonic() >= deadline:
                raise
        # the markers arrive through other requests; poll cheaply rather than hold a worker thread
        await anyio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


@router.get("/snapshot")
async def snapshot(run_id: str, host: HostDep) -> dict[str, Any]:
    """A self-contained snapshot cut at every rank's current position."""
    return await to_thread.run_sync(host.snapshot, run_id)


@router.post("/restore")
async def restore(run_id: str, body: RestoreBody, host: HostDep) -> dict[str, Any]:
    """Roll the run back to the snapshot's cut (validated: format, version, run spec)."""
    return await to_thread.run_sync(host.restore, run_id, body.session, body.snapshot)
