"""Bearer-token auth on every route and method but /healthz and /readyz (enumerated from the app)."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute
from starlette.routing import Route

from service.api import create_app
from service.api.auth import OPEN_PATHS
from service.settings import Settings

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token-1"


def _routes(app) -> list[tuple[str, str]]:
    """Every documented operation plus the app's plain routes (docs, openapi.json)."""
    out = [(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops]
    out += [(m, r.path) for r in app.routes if isinstance(r, APIRoute | Route) for m in sorted(r.methods or ()) if m != "HEAD"]
    return [(m, p.replace("{run_id}", "r").replace("{checkpoint_id}", "c")) for m, p in out]


async def test_every_route_needs_a_token(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, durable=False, wandb_enabled=False, auth_tokens=[TOKEN, "other-token-2"])
    app = create_app(settings, sinks=[])
    routes = _routes(app)
    assert len(routes) >= 12
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        for method, path in routes:
            none = await api.request(method, path)
            wrong = await api.request(method, path, headers={"authorization": "Bearer nope-nope-nope"})
            if path in OPEN_PATHS:  # the probes and the dashboard page (which asks for the token)
                assert none.status_code == 200, path
                continue
            assert (none.status_code, none.json()["type"]) == (401, "unauthorized"), (method, path)
            assert (wrong.status_code, wrong.json()["type"]) == (403, "forbidden"), (method, path)
        good = await api.get("/v1/runs", headers={"authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        assert (await api.get("/dashboard/js/app.js")).status_code == 200  # static, no run data
        assert (await api.get("/dashboard")).status_code == 401  # only the assets under the prefix are open


def test_tokens_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LINNAEUS_METRICS_AUTH_TOKENS", "alpha-token-1, beta-token-2")
    assert Settings(data_dir=tmp_path).auth_tokens == ["alpha-token-1", "beta-token-2"]
