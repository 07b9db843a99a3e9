"""service/core stays pure: no web, HTTP client, wandb, storage or sink imports (like httpx's export test)."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import service.core

FORBIDDEN = ("fastapi", "starlette", "httpx", "wandb", "uvicorn", "sqlite3", "service.api", "service.sinks",
             "service.storage", "service.runtime", "client._client", "client._transport", "client._worker")
CORE = Path(service.core.__file__).parent


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(path: Path) -> None:
    bad = [n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []


def test_core_doctests_pass() -> None:
    failures = 0
    tried = 0
    for info in pkgutil.iter_modules(service.core.__path__, "service.core."):
        result = doctest.testmod(importlib.import_module(info.name))
        failures += result.failed
        tried += result.attempted
    assert tried > 10 and failures == 0


def test_importing_the_core_loads_no_web_or_storage_module() -> None:
    import subprocess
    import sys

    banned = ("httpx", "fastapi", "starlette", "wandb", "uvicorn", "sqlite3")
    code = f"import sys, service.core.run_commands, service.core.snapshot; print([m for m in {banned} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_client_exports_resolve() -> None:
    import client

    for name in client.__all__:
        assert getattr(client, name) is not None
