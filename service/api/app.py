"""The app factory and its lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.api import replicas
from service.api.auth import BearerAuth
from service.api.body_limit import BodyLimit
from service.api.checkpoint_waits import CheckpointWaits
from service.api.errors import install_error_handlers
from service.api.fast_ingest import ROUTE_PATH, EventsFastPath, ingest_pool
from service.api.readiness import Readiness, WriteGate
from service.api.routes import dashboard, health, ingest, metrics, runs, snapshots, stream
from service.api.run_export import RunExport
from service.api.stream_hub import StreamHub
from service.api.telemetry import RequestMetrics, Telemetry
from service.core.emission import Sink
from service.core.errors import StoreUnavailable
from service.runtime.alert_log import AlertLog
from service.runtime.host import RunHost
from service.runtime.replica import ReplicaHost
from service.settings import Settings
from service.storage.base import Store
from service.storage.sqlite import SqliteStore

log = logging.getLogger("linnaeus_metrics")


def default_sinks(settings: Settings) -> list[Sink]:
    """The sinks the settings ask for."""
    sinks: list[Sink] = []
    if settings.console_enabled:
        from service.sinks.console import ConsoleSink

        sinks.append(ConsoleSink())
    if settings.wandb_enabled:
        from service.sinks.wandb import WandbSink

        sinks.append(WandbSink(settings.data_dir, mode=settings.wandb_mode))  # wandb adds wandb/
    return sinks


def _open_store(settings: Settings, readiness: Readiness) -> Store | None:
    if settings.store is not None:
        return replicas.open_shared_store(settings)
    try:
        return SqliteStore(settings.data_dir / "metrics.sqlite3", settings.sqlite_synchronous)
    except StoreUnavailable as exc:
        readiness.not_ready(str(exc))  # no store: never ready, every write refused (nothing acked in memory only)
        return None


def _make_host(settings: Settings, sinks: list[Sink], store: Store | None, listeners: list[Any]) -> RunHost:
    options: dict[str, Any] = {"max_runs": settings.max_runs, "history_max_points": settings.history_max_points,
                               "image_every_events": settings.snapshot_every_events, "listeners": listeners}
    if settings.store is None or store is None:
        return RunHost(sinks, store=store, **options)
    return replicas.make_replica(settings, sinks, store, options)


def _recover(host: RunHost, store: Store, readiness: Readiness) -> float | None:
    started = time.monotonic()
    try:
        count = host.recover(store.load())
    except Exception as exc:  # a damaged journal must leave the service up but not ready
        log.exception("recovery failed; the service stays not ready")
        readiness.not_ready(f"recovery failed: {type(exc).__name__}: {exc}")
        return None
    took = time.monotonic() - started
    log.info("recovered %d run(s) in %.3f s", count, took)
    readiness.recovered = True
    readiness.probe_now()
    return took


async def _checkpoint_wal(store: SqliteStore, interval_s: float) -> None:
    """Regularly, so that the main file holds the data even when little is written."""
    while True:
        await anyio.sleep(interval_s)
        await to_thread.run_sync(store.checkpoint_wal)


async def _shut_down(settings: Settings, sinks: Sequence[Sink], host: RunHost, store: Store | None,
                     readiness: Readiness) -> None:
    recovered = readiness.recovered
    readiness.stop()
    # uvicorn stopped accepting and drained requests; sinks finish within the deadline,
    # then the final images make the next start quick
    for sink in sinks:
        await to_thread.run_sync(sink.close, settings.shutdown_timeout_s)
    if isinstance(host, ReplicaHost):
        await to_thread.run_sync(replicas.stop, host)
    elif store is not None:
        if recovered:
            await to_thread.run_sync(_final_images, host)
        await to_thread.run_sync(store.close)


def _final_images(host: RunHost) -> None:
    try:
        host.write_images()
    except StoreUnavailable as exc:  # e.g. a full disk: the journal still holds everything
        log.warning("final recovery images not written: %s", exc)


async def _watch_stalls(host: RunHost, threshold_s: float) -> None:
    """Ask the runtime for stalled ranks a few times per threshold, off the event loop."""
    while True:
        await anyio.sleep(min(30.0, threshold_s / 4))
        try:
            await to_thread.run_sync(host.check_stalls, threshold_s)
        except Exception:  # the store may be unavailable: the next round tries again
            log.exception("stall check failed")


def _route(router: APIRouter, path: str, method: str) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ()))


def create_app(settings: Settings | None = None, sinks: Sequence[Sink] | None = None) -> FastAPI:
    """Build the service app.

    Args:
        settings: service settings (defaults read from the environment).
        sinks: outputs; by default wandb and console as the settings say.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        readiness: Readiness = app.state.readiness
        chosen = list(sinks) if sinks is not None else default_sinks(settings)
        store = app.state.store = _open_store(settings, readiness) if settings.durable else None
        host = app.state.host = _make_host(settings, chosen, store,
                                           [app.state.stream, AlertLog(), app.state.checkpoint_waits])
        app.state.ingest_pool = ingest_pool()
        app.state.telemetry.watch(host)
        readiness.quarantined = host.quarantined
        if not settings.durable:
            readiness.set_ready()
        if settings.export_run_metrics:
            app.state.telemetry.registry.register(RunExport(host, settings.export_max_runs))
        if isinstance(host, ReplicaHost):
            await to_thread.run_sync(replicas.start, host, readiness)
        elif store is not None:
            readiness.store = store
            took = await to_thread.run_sync(_recover, host, store, readiness)
            app.state.telemetry.recovery.set(took or 0.0)
        try:
            async with anyio.create_task_group() as tasks:
                if isinstance(store, SqliteStore):
                    tasks.start_soon(_checkpoint_wal, store, settings.wal_checkpoint_interval_s)
                if isinstance(host, ReplicaHost):
                    tasks.start_soon(replicas.probe_regularly, readiness, host.ownership.ttl_s / 3)
                tasks.start_soon(_watch_stalls, host, settings.stall_alert_s)
                try:
                    yield
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            app.state.stream.close()
            await to_thread.run_sync(app.state.ingest_pool.shutdown)  # requests were drained: none waits
            await _shut_down(settings, chosen, host, store, readiness)

    app = FastAPI(title="linnaeus-metrics", version="0.1.0", lifespan=lifespan,
                  summary="Exact global metrics for multi-task training across ranks")
    app.state.settings = settings
    app.state.readiness = Readiness(settings.readiness_probe_interval_s)
    app.state.store = None
    app.state.telemetry = Telemetry()
    app.state.stream = StreamHub(settings.stream_buffer_events, settings.stream_reader_queue_events)
    app.state.checkpoint_waits = CheckpointWaits()
    app.state.telemetry.watch_stream(app.state.stream)
    install_error_handlers(app)
    for module in (health, runs, ingest, metrics, snapshots, stream):
        app.include_router(module.router)
    dashboard.install(app)
    # outermost last: metrics see every reply; auth before anything reads a body
    app.add_middleware(EventsFastPath, route=_route(ingest.router, ROUTE_PATH, "POST"))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, decoded_limit=settings.max_decoded_bytes)
    app.add_middleware(WriteGate, readiness=app.state.readiness)
    if settings.auth_tokens:
        app.add_middleware(BearerAuth, tokens=settings.auth_tokens)
    app.add_middleware(RequestMetrics, telemetry=app.state.telemetry)
    return app
