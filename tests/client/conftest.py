"""Fixtures for client tests: a fake service and a client factory with fast timings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from client import MetricsClient
from tests.client.client_fakes import TASKS, FakeClock, FakeService


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def make_client(service: FakeService) -> Iterator[Callable[..., MetricsClient]]:
    """Build clients on the fake service with fast test timings; closes them at the end."""
    made: list[MetricsClient] = []

    def make(**overrides: Any) -> MetricsClient:
        kwargs: dict[str, Any] = dict(
            url="http://metrics.test",
            run_id="exp",
            rank=0,
            world_size=1,
            tasks=TASKS,
            total_steps=100,
            transport=service.transport(),
            flush_interval_s=0.01,
            retry_initial_s=0.005,
            retry_max_s=0.02,
            clock=FakeClock(),
        )
        kwargs.update(overrides)
        client = MetricsClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout_s=0.5)
