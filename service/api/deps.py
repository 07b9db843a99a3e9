"""Annotated dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.core.registry import RunRegistry
from service.settings import Settings


def get_registry(request: Request) -> RunRegistry:
    """The app's registry (set by the lifespan)."""
    registry: RunRegistry = request.app.state.registry
    return registry


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


RegistryDep = Annotated[RunRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
