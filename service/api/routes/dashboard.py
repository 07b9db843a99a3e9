"""The dashboard: ``GET /`` and its static files, shipped inside the package (no CDN).

The page and its assets hold no run data, so they are served without a token; every
request the page makes for data goes through the same bearer auth as any client
(``service.api.auth.OPEN_PREFIXES``). The page asks the user for the token on a 401.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

#: Where the page's assets are served from; ``index.html`` refers to them by this prefix.
ASSETS_PREFIX = "/dashboard"

router = APIRouter(tags=["dashboard"])


def assets_dir() -> Path:
    """The package folder holding ``index.html``, the scripts and the vendored uPlot."""
    return Path(str(resources.files("service.api") / "dashboard"))


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The single-page dashboard (hash-routed: ``#/runs``, ``#/run/<id>``, ``#/compare?runs=a,b``)."""
    # no-cache: a service upgrade must not leave an old page talking to a new API
    return FileResponse(assets_dir() / "index.html", headers={"cache-control": "no-cache"})


def install(app: FastAPI) -> None:
    """Add the page route and mount the assets (a mount cannot live in an ``APIRouter``)."""
    app.include_router(router)
    app.mount(ASSETS_PREFIX, StaticFiles(directory=assets_dir()), name="dashboard")
