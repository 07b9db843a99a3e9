"""A real uvicorn on 127.0.0.1 in a thread, and the state fingerprint the fuzz compares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from service.core.emission import Sink
from service.settings import Settings
from tests.e2e.conftest import live_service as serve


@dataclass
class Live:
    """A running service: its URL and the app (for the host, in assertions only)."""

    url: str
    app: Any


@contextmanager
def live_service(settings: Settings, sinks: Sequence[Sink] = ()) -> Iterator[Live]:
    """Serve ``create_app(settings, sinks)`` on a free loopback port until the block ends."""
    with serve(settings, sinks) as (url, app):
        yield Live(url, app)


LISTING = "/v1/runs"


def fingerprint(client: httpx.Client, run_ids: Sequence[str], listing: bool = True) -> dict[str, Any]:
    """Everything a reader can see of the service's runs: list, and each run's info and data.

    Keys: ``LISTING`` for the list (no run id contains a slash), then each run id.
    """
    out: dict[str, Any] = {LISTING: _get(client, LISTING)} if listing else {}
    for run_id in dict.fromkeys(run_ids):
        base = f"/v1/runs/{run_id}"
        out[run_id] = {part: _get(client, base + part)
                       for part in ("", "/history", "/summary", "/metrics", "/snapshot")}
    return out


def _get(client: httpx.Client, path: str) -> Any:
    reply = client.get(path)
    return reply.status_code, reply.json()


def host_state(app: Any) -> dict[str, Any]:
    """Every run's snapshot and info straight from the host (sink figures left out)."""
    host = app.state.host
    return {run_id: (host.snapshot(run_id), {k: v for k, v in host.info(run_id).items() if k != "sinks"})
            for run_id in host.run_ids()}
