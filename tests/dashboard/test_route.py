"""The page and its assets: served from the package, declared as package data, nothing fetched from elsewhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.api import create_app
from service.api.routes.dashboard import assets_dir
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _asset_files() -> list[str]:
    return sorted(str(p.relative_to(assets_dir())) for p in assets_dir().rglob("*") if p.is_file())


@pytest.mark.anyio
async def test_page_and_assets_are_served(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, durable=False, wandb_enabled=False), sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        page = await api.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        referenced = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text)
        assert "/dashboard/vendor/uPlot.iife.min.js" in referenced
        for path in referenced:
            assert (await api.get(path)).status_code == 200, path
        script = await api.get("/dashboard/js/app.js")
        assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert (await api.get("/dashboard/js/nope.js")).status_code == 404
        assert (await api.get("/dashboard/%2e%2e/routes/dashboard.py")).status_code == 404


def test_no_asset_loads_anything_from_another_origin() -> None:
    """Air-gapped: no CDN, no absolute URL in what the page loads (the uPlot licence text aside)."""
    for name in _asset_files():
        if name.endswith(".LICENSE"):
            continue
        text = (assets_dir() / name).read_text()
        assert not re.search(r"""(?:src|href|import|url|fetch)\s*\(?\s*["'](?:https?:)?//""", text), name


def test_every_asset_is_declared_package_data() -> None:
    """A non-editable install ships the page: each file matches a package-data pattern."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service.api"]
    files = _asset_files()
    assert {"index.html", "js/app.js", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css",
            "vendor/uPlot.LICENSE"} <= set(files)
    shipped = {str(p.relative_to(assets_dir())) for pattern in patterns for p in assets_dir().parent.glob(pattern)}
    assert set(files) <= shipped, set(files) - shipped
