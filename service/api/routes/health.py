"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.core.errors import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Ready once recovery finished and the store takes writes."""
    state = request.app.state
    store = getattr(state, "store", None)
    if not state.ready and state.store_failed and store is not None:
        await to_thread.run_sync(_probe, state, store)
    if not getattr(state, "ready", False):
        reason = getattr(state, "not_ready_reason", "starting")
        return JSONResponse({"status": "not_ready", "detail": reason}, status_code=503)
    return {"status": "ready"}


def _probe(state: Any, store: Any) -> None:
    """After a failed write, readiness returns once the store takes writes again."""
    try:
        store.probe()
    except StoreUnavailable as exc:
        state.not_ready_reason = str(exc)
        return
    state.ready, state.store_failed, state.not_ready_reason = True, False, None


@router.get("/metrics", response_class=Response)
async def prometheus(request: Request) -> Response:
    """Prometheus exposition of the service itself."""
    return Response(generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
