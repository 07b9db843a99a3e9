"""Checkpoints (consistent cuts), snapshots and restore."""

from __future__ import annotations

import time
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response

from service.api.checkpoint_waits import CheckpointWaits
from service.api.deps import HostDep, SettingsDep
from service.api.schemas import ERRORS, NAME, RestoreBody
from service.core.errors import CheckpointPending

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["snapshots"], responses={**ERRORS, 408: ERRORS[409]})


@router.get("/checkpoints/{checkpoint_id}")
async def checkpoint(
    run_id: str,
    checkpoint_id: Annotated[str, Path(pattern=NAME)],
    request: Request,
    host: HostDep,
    settings: SettingsDep,
    wait_s: Annotated[float, Query(ge=0, le=3600)] = 0.0,
) -> Response:
    """The snapshot at checkpoint ``checkpoint_id`` once every rank's marker is in.

    Waits up to ``wait_s`` (capped by the ``checkpoint_wait_max_s`` setting), then
    answers 408 naming the missing ranks. A waiting request is woken when the cut is made
    (``service.api.checkpoint_waits``), not by polling.
    """
    deadline = time.monotonic() + min(wait_s, settings.checkpoint_wait_max_s)
    waits: CheckpointWaits = request.app.state.checkpoint_waits
    waiter = waits.add(run_id, checkpoint_id)  # before the first check: a cut made after it wakes us
    try:
        while True:
            # woken by the cut, every rank asks at once: answer from memory on the event loop when the
            # run's lock is free (no thread hop each), else through a worker thread (store reads, waits)
            found = host.cut_checkpoint(run_id, checkpoint_id)
            if found is None:
                try:
                    found = await to_thread.run_sync(host.checkpoint, run_id, checkpoint_id)
                except CheckpointPending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    await waiter.wait(left)
                    continue
            body = waits.cached(run_id, checkpoint_id, found)  # the same snapshot's JSON for every rank
            if body is None:
                body = await to_thread.run_sync(waits.encoded, run_id, checkpoint_id, found)
            return Response(body, media_type="application/json")
    finally:
        waits.remove(waiter)


@router.get("/snapshot")
async def snapshot(run_id: str, host: HostDep) -> dict[str, Any]:
    """A self-contained snapshot cut at every rank's current position."""
    return await to_thread.run_sync(host.snapshot, run_id)


@router.post("/restore")
async def restore(run_id: str, body: RestoreBody, host: HostDep) -> dict[str, Any]:
    """Roll the run back to the snapshot's cut (validated: format, version, run spec)."""
    return await to_thread.run_sync(host.restore, run_id, body.session, body.snapshot)
