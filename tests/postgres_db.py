"""A throwaway PostgreSQL database per test: created with a unique name, dropped after.

The server is ``LINNAEUS_METRICS_TEST_POSTGRES`` (default: the development machines' one at
127.0.0.1:5432, user postgres). Without a reachable server the tests that need it skip
with the reason, unless ``LINNAEUS_METRICS_REQUIRE_POSTGRES=1`` (set by .ci/run): then
they fail, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest

SERVER = os.environ.get("LINNAEUS_METRICS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        _unavailable(f"psycopg is not installed ({exc}); install the [postgres] extra")
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL at {SERVER} is not reachable ({str(exc).strip().splitlines()[0]})")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("LINNAEUS_METRICS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"LINNAEUS_METRICS_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    base, _, _ = SERVER.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database's URL; dropped (with any connections still open to it) afterwards."""
    admin = _admin()
    name = f"lm_test_{uuid.uuid4().hex[:16]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test server, for one test."""
    with fresh_database() as url:
        yield url


def server_address(url: str) -> tuple[str, int]:
    """(host, port) of the server a URL points at."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(url)
    return str(parts.get("host") or "127.0.0.1"), int(parts.get("port") or 5432)


def with_port(url: str, port: int) -> str:
    """The same database reached on 127.0.0.1:``port`` (a proxy in front of the server)."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(url)
    user = parts.get("user", "postgres") + (f":{parts['password']}" if parts.get("password") else "")
    return f"postgresql://{user}@127.0.0.1:{port}/{parts['dbname']}"
