"""Annotated dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.runtime.host import RunHost
from service.settings import Settings


def get_host(request: Request) -> RunHost:
    """The app's run host (set by the lifespan)."""
    host: RunHost = request.app.state.host
    return host


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


HostDep = Annotated[RunHost, Depends(get_host)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
