"""Real servers on 127.0.0.1: uvicorn in a thread, or the CLI in a subprocess (for kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn

from client._wire import encode_event
from service.api import create_app
from service.settings import Settings
from service.sinks.memory import MemorySink
from tests.conftest import RunData, stream_events


class _Server(uvicorn.Server):
    """uvicorn that tells when it is listening (no polling, no sleeps)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@dataclass
class LiveServer:
    url: str
    sink: MemorySink
    settings: Settings


@contextmanager
def live_service(settings: Settings, sinks: Sequence[Any] = ()) -> Iterator[tuple[str, Any]]:
    """Serve ``create_app(settings, sinks)`` on a free loopback port until the block ends: (url, app)."""
    app = create_app(settings, sinks=list(sinks))
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.listening.wait(20), "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"


def post_one_rank_run(url: str, run_id: str, data: RunData, metrics: dict[str, Any]) -> None:
    """Create ``run_id`` and deliver rank 0's whole stream over plain HTTP (JSON), as a one-rank run."""
    httpx.post(f"{url}/v1/runs", json=data.spec(run_id, metrics)).raise_for_status()
    session = httpx.post(f"{url}/v1/runs/{run_id}/sessions", json={"rank": 0}).json()["session"]
    events = [encode_event(e, False) for e in stream_events(data, 0)]
    httpx.post(f"{url}/v1/runs/{run_id}/events", json={"session": session, "seq": 0, "events": events}
               ).raise_for_status()


@contextmanager
def quiet_service(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    """A live service without wandb or console output, its data in a fresh ``name`` dir: its URL."""
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp(name)) / "data", wandb_enabled=False,
                        console_enabled=False)
    with live_service(settings) as (served, _):
        yield served


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    sink = MemorySink()
    settings = Settings(data_dir=tmp_path / "data", wandb_enabled=False, console_enabled=False)
    with live_service(settings, [sink]) as (url, _):
        yield LiveServer(url, sink, settings)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port that was free a moment ago (the CLI must then bind it itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``linnaeus-metrics serve`` as a child process, up once its port answers and ``/readyz`` says ready.

    Every process started is killed after its test (``reap``), whatever the test did.
    """

    alive: ClassVar[set[subprocess.Popen[str]]] = set()

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None,
                 args: Sequence[str] = ()) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "LINNAEUS_METRICS_WANDB_ENABLED": "false",
                    "LINNAEUS_METRICS_CONSOLE_ENABLED": "false", **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout_s: float = 60.0, ready: bool = True) -> ServiceProcess:
        """Start and wait for the port (not a log line: uvicorn logs before it serves); then,
        with ``ready``, for ``/readyz`` to answer 200."""
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--log-level", "info", *self.args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)  # its own process group: kill9 takes its children too
        ServiceProcess.alive.add(self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        self._wait_for(lambda: _port_open(self.port), deadline, "its port")
        if ready:
            self._wait_for(self._ready, deadline, "/readyz 200")
        return self

    def _wait_for(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        assert self.proc is not None
        while not condition():
            try:  # waiting on the process's exit is the poll's pause: an early exit ends it at once
                self.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, f"service: no {what} in time: {self.log()}"
                continue
            raise AssertionError(f"service exited ({self.proc.returncode}) before {what}: {self.log()}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.lines.append(line)

    def kill9(self) -> None:
        """SIGKILL to the service and every process it started (wandb-core), as a crashed host would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    @classmethod
    def reap(cls) -> None:
        """Kill whatever a test left running."""
        for proc in list(cls.alive):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            cls.alive.discard(proc)

    def log(self) -> str:
        return "".join(self.lines[-40:])
