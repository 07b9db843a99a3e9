"""``linnaeus-metrics serve``: run the service (one uvicorn worker)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service.cli.config import load_yaml_mapping
from service.cli.errors import CliError
from service.settings import Settings

ENV_PREFIX = "LINNAEUS_METRICS_"


def add_commands(commands: Any) -> None:
    """Register ``serve``."""
    serve = commands.add_parser("serve", help="run the service (one uvicorn worker)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", help="durable state directory (default ./metrics-data)")
    serve.add_argument("--config", help="YAML settings file (keys as in Settings)")
    serve.add_argument("--auth-token", action="append", dest="auth_tokens", help="bearer token (repeatable)")
    serve.add_argument("--log-level", help="critical|error|warning|info|debug")
    serve.add_argument("--store", help="postgresql://... shares state between replicas (default: SQLite in data dir)")
    serve.add_argument("--replica-id", help="this replica's id among those sharing the store (default: host-pid-rnd)")
    serve.add_argument("--advertised-url", help="where other replicas send clients for runs this one owns")
    serve.add_argument("--lease-ttl-s", type=float, help="how long a run's lease lasts without renewal (default 5)")
    serve.add_argument("--export-run-metrics", action="store_true", default=None,
                       help="export each run's core/ values and rank lags on /metrics")
    serve.set_defaults(func=_serve)


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags over environment over the settings file over defaults."""
    values = {k: v for k, v in _file_values(args.config).items() if f"{ENV_PREFIX}{k.upper()}" not in os.environ}
    flags = {k: getattr(args, k, None) for k in ("host", "port", "data_dir", "auth_tokens", "log_level",
                                                 "export_run_metrics", "store", "replica_id", "advertised_url",
                                                 "lease_ttl_s")}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid setting {where}: {first['msg']}") from exc


def _file_values(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    return {str(k).lower().replace("-", "_"): v for k, v in load_yaml_mapping(path).items()}


def check_data_dir(path: Path) -> None:
    """Create the data dir and prove it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CliError(f"data dir {path} is not usable: {exc.strerror or exc}") from exc


def _server(config: Any, on_exit: Callable[[], None]) -> Any:
    """A uvicorn server that calls ``on_exit`` on its event loop as soon as it is told to stop.

    uvicorn waits for open responses before the lifespan shuts down, and an event stream
    never ends by itself: without this, one open dashboard would hold a SIGTERM for the
    whole graceful timeout. ``on_exit`` runs on the loop, not inside the signal handler.
    """
    import uvicorn

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(on_exit)
            super().handle_exit(sig, frame)

    return Server(config)


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    check_data_dir(settings.data_dir)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from service.api import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                            log_level=settings.log_level, timeout_graceful_shutdown=int(settings.shutdown_timeout_s))
    server = _server(config, app.state.stream.close)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits on a bind failure after logging it
        raise CliError(f"could not serve on {settings.host}:{settings.port} (port busy or not allowed)") from exc
    if not server.started:
        raise CliError(f"could not serve on {settings.host}:{settings.port} (port busy or not allowed)")
    return 0

