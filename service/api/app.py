"""The app factory and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from service.api.auth import BearerAuth
from service.api.errors import install_error_handlers
from service.api.routes import health, ingest, metrics, runs
from service.core.emission import Sink
from service.core.registry import RunRegistry
from service.settings import Settings

log = logging.getLogger("linnaeus_metrics")


def default_sinks(settings: Settings) -> list[Sink]:
    """The sinks the settings ask for."""
    sinks: list[Sink] = []
    if settings.console_enabled:
        from service.sinks.console import ConsoleSink

        sinks.append(ConsoleSink())
    if settings.wandb_enabled:
        from service.sinks.wandb import WandbSink

        sinks.append(WandbSink(settings.wandb_dir, mode=settings.wandb_mode))
    return sinks


def create_app(settings: Settings | None = None, sinks: Sequence[Sink] | None = None) -> FastAPI:
    """Build the service app.

    Args:
        settings: service settings (defaults read from the environment).
        sinks: outputs; by default wandb and console as the settings say.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = list(sinks) if sinks is not None else default_sinks(settings)
        app.state.registry = RunRegistry(chosen, max_runs=settings.max_runs,
                                         history_max_points=settings.history_max_points)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            # ingest has stopped (uvicorn drained requests); then sinks finish within the deadline
            for sink in chosen:
                await to_thread.run_sync(sink.close, settings.shutdown_timeout_s)

    app = FastAPI(title="linnaeus-metrics", version="0.1.0", lifespan=lifespan,
                  summary="Exact global metrics for multi-task training across ranks")
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    for module in (health, runs, ingest, metrics):
        app.include_router(module.router)
    if settings.auth_tokens:
        app.add_middleware(BearerAuth, tokens=settings.auth_tokens)
    return app
