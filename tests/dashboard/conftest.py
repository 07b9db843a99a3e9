"""Browser fixtures: Debian's chromium driven by Playwright, a real service on 127.0.0.1."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from service.api import create_app
from service.settings import Settings
from tests.e2e.conftest import _Server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LINNAEUS_METRICS_ARTIFACTS", "/tmp/linnaeus-metrics-artifacts")) / "dashboard"


@dataclass
class Service:
    url: str
    app: Any


@contextmanager
def serve(tmp_path: Path, tokens: list[str] | None = None) -> Iterator[Service]:
    """The real app, with its real stream, on a free loopback port."""
    settings = Settings(data_dir=tmp_path / "data", wandb_enabled=False, console_enabled=False,
                        auth_tokens=tokens or [])
    app = create_app(settings, sinks=[])
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on",
                                        timeout_graceful_shutdown=5))  # open streams end at shutdown
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.listening.wait(20), "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Service(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@dataclass
class Console:
    """Console errors and uncaught page errors seen by one page."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.set_default_timeout(15_000)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def readme_screenshot(page: Any) -> None:
    """The run page as the README shows it: an artifact always, ``docs/dashboard.png`` on request.

    Set ``LINNAEUS_METRICS_UPDATE_SCREENSHOT=1`` to refresh the committed picture (left alone
    otherwise, so a test run does not leave the work tree modified).
    """
    page.screenshot(path=str(ARTIFACTS / "readme.png"))
    if os.environ.get("LINNAEUS_METRICS_UPDATE_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
