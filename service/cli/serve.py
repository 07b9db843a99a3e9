"""``linnaeus-metrics serve``: run the service (one uvicorn worker).

Start-up order matters (DESIGN §8, §9): settings, then the data dir's lock, then the
listening socket, and only then the app loads runs and opens sinks. So a second service on
the same data dir or a busy port exits with a one-line reason before it reads or changes
anything. The socket is bound here with ``SO_REUSEADDR`` (as uvicorn does), so restarting on
the same port right after a ``kill -9`` works.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

from service.cli.errors import CliError

SERVICE_EXTRA = "pip install 'linnaeus-metrics[service]'"
TIME_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_commands(commands: Any) -> None:
    """Register ``serve`` (a stub that names the extra to install when the service's packages are missing)."""
    help_ = "run the service (one uvicorn worker)"
    try:
        from service.cli.serve_flags import add_setting_flags
    except ImportError as exc:  # the base install: the client and the query commands only
        missing = exc.name or str(exc)
        # no option prefix: every argument (--help included) is taken as is, and the reply names the extra
        serve = commands.add_parser("serve", help=f"{help_} [needs the service extra]", add_help=False,
                                    prefix_chars="\x00")
        serve.add_argument("rest", nargs="*")
        serve.set_defaults(func=lambda _args: _missing_extra(missing))
        return
    serve = commands.add_parser("serve", help=help_, description=f"{help_}. Every setting is a flag and an "
                                "environment variable LINNAEUS_METRICS_<NAME>; flag > environment > --config "
                                "file > default.")
    serve.add_argument("--config", help="YAML settings file (keys as the flags, with underscores)")
    add_setting_flags(serve)
    serve.set_defaults(func=_serve)


def _missing_extra(missing: str) -> int:
    raise CliError(f"serve needs the service extra ({missing} is not installed): {SERVICE_EXTRA}")


def _serve(args: argparse.Namespace) -> int:
    from service.cli.lock import DataDirLock
    from service.cli.serve_flags import load_settings

    settings = load_settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format=TIME_FORMAT)
    lock = DataDirLock(settings.data_dir).acquire()
    try:
        check_data_dir_writable(settings.data_dir)
        sock = bind(settings.host, settings.port)
        return _run(settings, sock)
    finally:
        lock.release()


def check_data_dir_writable(path: Any) -> None:
    """Prove the (locked) data dir takes a file."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CliError(f"data dir {path} is not usable: {exc.strerror or exc}") from exc


def bind(host: str, port: int) -> socket.socket:
    """A listening socket as uvicorn makes it (``SO_REUSEADDR``: a restart after kill -9 binds at once)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (port busy or not allowed)") from exc
    sock.set_inheritable(True)
    return sock


def _run(settings: Any, sock: socket.socket) -> int:
    import uvicorn

    from service.api import create_app
    from service.cli.http_protocol import with_deadlines

    app = create_app(settings)
    config = uvicorn.Config(
        app, workers=1, log_level=settings.log_level, log_config=uvicorn_log_config(), access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        http=with_deadlines(settings.header_timeout_s, settings.body_timeout_s))
    server = _server(config, app.state.stream.close)
    server.run(sockets=[sock])
    if not server.started:
        raise CliError("the service did not start (see the log above)")
    return 0


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


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging config with a timestamp on every line."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG, "formatters": {
        name: {**spec, "fmt": "%(asctime)s " + spec["fmt"]} for name, spec in LOGGING_CONFIG["formatters"].items()}}
    return config
