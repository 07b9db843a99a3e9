"""An app per test, driven in-process through ASGITransport with its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.api import create_app
from service.settings import Settings
from service.sinks.memory import MemorySink


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", durable=False, wandb_enabled=False)


@pytest.fixture
async def api(settings: Settings, sink: MemorySink) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, sinks=[sink])
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
