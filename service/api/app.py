"""The app factory and its lifespan."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from anyio import to_thread
from fastapi import FastAPI

from service.api.auth import BearerAuth
from service.api.errors import install_error_handlers
from service.api.routes import dashboard, health, ingest, metrics, runs, snapshots, stream
from service.api.run_export import RunExport
from service.api.stream_hub import StreamHub
from service.api.telemetry import RequestMetrics, Telemetry
from service.core.emission import Sink
from service.core.errors import StoreError, StoreUnavailable
from service.runtime.alert_log import AlertLog
from service.runtime.fencing import SharedStore
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


def _open_store(settings: Settings, app: FastAPI) -> Store | None:
    app.state.not_ready_reason = None
    if not settings.durable:
        app.state.ready = True
        return None
    if settings.store is not None:
        from service.storage.postgres import PostgresStore

        # connects on first use: a replica may start before its database is up (not ready until then)
        return PostgresStore(settings.store, settings.store_connect_timeout_s, connect=False)
    try:
        return SqliteStore(settings.data_dir / "metrics.sqlite3", settings.sqlite_synchronous)
    except StoreUnavailable as exc:
        log.error("not ready: %s", exc)
        app.state.not_ready_reason = str(exc)
        return None


def _make_host(settings: Settings, sinks: list[Sink], store: Store | None, listeners: list[Any]) -> RunHost:
    options: dict[str, Any] = {"max_runs": settings.max_runs, "history_max_points": settings.history_max_points,
                               "image_every_events": settings.snapshot_every_events, "listeners": listeners}
    if settings.store is None or store is None:
        return RunHost(sinks, store=store, **options)
    shared = cast("SharedStore", store)  # a PostgresStore (``_open_store``)
    replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return ReplicaHost(sinks, shared, replica_id, advertised_url(settings), settings.lease_ttl_s, **options)


def advertised_url(settings: Settings) -> str:
    """Where other replicas send clients for this one's runs (the bind address unless set)."""
    if settings.advertised_url:
        return settings.advertised_url.rstrip("/")
    host = socket.gethostname() if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _connect_shared(host: ReplicaHost, app: FastAPI) -> None:
    """A replica is ready once its database takes a write; runs are recovered when taken over."""
    try:
        host.shared.probe()
    except StoreUnavailable as exc:
        log.error("not ready: %s", exc)
        app.state.not_ready_reason, app.state.store_failed = str(exc), True
    else:
        app.state.ready = True
    host.ownership.start()
    threading.Thread(target=_watch_shared, args=(host, app), name="store-watch", daemon=True).start()
    log.info("replica %s (%s) on %s", host.ownership.replica_id, host.ownership.url,
             getattr(host.shared, "where", "the shared store"))


def _watch_shared(host: ReplicaHost, app: FastAPI) -> None:
    """Readiness follows the database even while no request comes: a real write every TTL/3."""
    stop = app.state.stop_watch
    while not stop.wait(host.ownership.ttl_s / 3):
        try:
            host.shared.probe()
        except StoreUnavailable as exc:
            if app.state.ready:
                log.error("not ready: %s", exc)
            app.state.ready, app.state.store_failed, app.state.not_ready_reason = False, True, str(exc)
        else:
            app.state.ready, app.state.store_failed, app.state.not_ready_reason = True, False, None


def _stop_shared(host: ReplicaHost, app: FastAPI) -> None:
    """Last images of the owned runs, then give their leases up so other replicas take over at once."""
    app.state.stop_watch.set()
    try:
        host.write_images()
    except StoreError as exc:
        log.warning("final images not written: %s", exc)
    host.ownership.close(release=True)
    host.shared.close()


def _recover(host: RunHost, store: Store, app: FastAPI) -> None:
    started = time.monotonic()
    try:
        count = host.recover(store.load())
    except Exception as exc:  # a damaged journal must leave the service up but not ready
        log.exception("recovery failed; the service stays not ready")
        app.state.not_ready_reason = f"recovery failed: {type(exc).__name__}: {exc}"
        return
    app.state.recovery_s = time.monotonic() - started
    log.info("recovered %d run(s) in %.3f s", count, app.state.recovery_s)
    app.state.ready = True


async def _watch_stalls(host: RunHost, threshold_s: float) -> None:
    """Ask the runtime for stalled ranks a few times per threshold, off the event loop."""
    while True:
        await anyio.sleep(min(30.0, threshold_s / 4))
        try:
            await to_thread.run_sync(host.check_stalls, threshold_s)
        except Exception:  # the store may be unavailable: the next round tries again
            log.exception("stall check failed")


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
        store = app.state.store = _open_store(settings, app)
        host = app.state.host = _make_host(settings, chosen, store, [app.state.stream, AlertLog()])
        app.state.telemetry.watch(host)
        if settings.export_run_metrics:
            app.state.telemetry.registry.register(RunExport(host, settings.export_max_runs))
        if isinstance(host, ReplicaHost):
            await to_thread.run_sync(_connect_shared, host, app)
        elif store is not None:
            await to_thread.run_sync(_recover, host, store, app)
            app.state.telemetry.recovery.set(getattr(app.state, "recovery_s", 0.0))
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_watch_stalls, host, settings.stall_alert_s)
                yield
                tasks.cancel_scope.cancel()
        finally:
            app.state.ready = False
            app.state.stream.close()
            # uvicorn stopped accepting and drained requests; sinks finish within the deadline,
            # then the final images make the next start quick
            for sink in chosen:
                await to_thread.run_sync(sink.close, settings.shutdown_timeout_s)
            if isinstance(host, ReplicaHost):
                await to_thread.run_sync(_stop_shared, host, app)
            elif store is not None and app.state.not_ready_reason is None:
                await to_thread.run_sync(host.write_images)
                store.close()

    app = FastAPI(title="linnaeus-metrics", version="0.1.0", lifespan=lifespan,
                  summary="Exact global metrics for multi-task training across ranks")
    app.state.settings = settings
    app.state.ready = False
    app.state.not_ready_reason = "starting"
    app.state.store_failed = False
    app.state.store = None
    app.state.stop_watch = threading.Event()
    app.state.telemetry = Telemetry()
    app.state.stream = StreamHub(settings.stream_buffer_events, settings.stream_reader_queue_events)
    app.state.telemetry.watch_stream(app.state.stream)
    install_error_handlers(app)
    for module in (health, runs, ingest, metrics, snapshots, stream):
        app.include_router(module.router)
    dashboard.install(app)
    app.add_middleware(RequestMetrics, telemetry=app.state.telemetry)
    if settings.auth_tokens:
        app.add_middleware(BearerAuth, tokens=settings.auth_tokens)
    return app
