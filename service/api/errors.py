"""Domain errors → HTTP, in ONE table (looked up along the exception's MRO).

Every error reply is JSON ``{"type": <snake_case name>, "detail": <message>}`` plus
``expected_seq`` / ``missing_ranks`` where the error carries them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client._wire import DecodedTooLarge, WireError
from service.core import errors as core

log = logging.getLogger("linnaeus_metrics.api")


class BodyTooLarge(core.LimitExceeded):
    """The request body exceeds ``max_body_bytes``."""


STATUS: dict[type[Exception], int] = {
    DecodedTooLarge: 413,
    WireError: 422,
    core.InvalidInput: 422,
    core.NotFound: 404,
    core.Conflict: 409,
    core.IncompatibleState: 409,
    core.SnapshotVersionMismatch: 422,
    core.CheckpointPending: 408,
    BodyTooLarge: 413,
    core.LimitExceeded: 429,
    core.NotOwner: 503,
    core.StoreError: 503,
}


def status_of(exc: Exception) -> int:
    """The HTTP status of a domain error (first match along its MRO)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_type(exc: Exception) -> str:
    """``UnknownRun`` → ``unknown_run``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_response(status: int, type_: str, detail: str, **extra: Any) -> JSONResponse:
    """The one error body shape."""
    return JSONResponse({"type": type_, "detail": detail, **extra}, status_code=status)


def domain_reply(exc: Exception, path: str, query: str, readiness: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and extra headers for a domain error on ``path`` (the one mapping, used by the
    framework's handlers and by the ingest fast path)."""
    if isinstance(exc, core.NotOwner) and exc.owner_url:  # 307 to the same path on the run's owner
        location = f"{exc.owner_url.rstrip('/')}{path}{f'?{query}' if query else ''}"
        return 307, {"type": error_type(exc), "detail": str(exc), "owner": exc.owner_url}, {"location": location}
    extra = {k: getattr(exc, k) for k in ("expected_seq", "missing_ranks") if hasattr(exc, k)}
    status = status_of(exc)
    if isinstance(exc, core.StoreUnavailable):  # disk full or a damaged file: stop claiming readiness
        readiness.not_ready(str(exc))
    if status >= 500:
        log.error("%s on %s: %s", type(exc).__name__, path, exc)
    return status, {"type": error_type(exc), "detail": str(exc), **extra}, {}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status, body, headers = domain_reply(exc, request.url.path, request.url.query, request.app.state.readiness)
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_body", "; ".join(parts))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # the framework could not parse the body (e.g. nested too deeply)
        return error_response(422, "invalid_body", f"body: {exc.detail}")
    type_ = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}.get(
        exc.status_code, "http_error")
    return error_response(exc.status_code, type_, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(core.ServiceError, _domain_error)
    app.add_exception_handler(WireError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
