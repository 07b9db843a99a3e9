"""Fixtures of the sink tests: an isolated offline wandb environment, sinks closed after use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WANDB_DIRS = {
    "WANDB_DIR": "dir",
    "WANDB_CACHE_DIR": "cache",
    "WANDB_CONFIG_DIR": "config",
    "WANDB_DATA_DIR": "data",
}


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, silent wandb writing under tmp_path; returns the WANDB_DIR."""
    for variable, sub in WANDB_DIRS.items():
        (tmp_path / "wandb-env" / sub).mkdir(parents=True)
        monkeypatch.setenv(variable, str(tmp_path / "wandb-env" / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in (
        "WANDB_API_KEY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_NAME",
        "WANDB_TAGS",
        "WANDB_NOTES",
    ):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "wandb-env" / "dir"


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Sinks appended here are closed after the test."""
    sinks: list[Any] = []
    yield sinks
    for sink in sinks:
        sink.close(timeout_s=30)
