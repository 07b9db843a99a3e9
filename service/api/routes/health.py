"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.readiness import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Ready once recovery finished and the store proved a durable write (probed at most once a
    ``readiness_probe_interval_s``)."""
    readiness: Readiness = request.app.state.readiness
    await readiness.refresh()
    report = readiness.report()
    return report if readiness.ready else JSONResponse(report, status_code=503)


@router.get("/metrics", response_class=Response)
async def prometheus(request: Request) -> Response:
    """Prometheus exposition of the service itself."""
    return Response(generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
