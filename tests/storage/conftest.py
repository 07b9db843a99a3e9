"""The two stores behind one fixture: every contract test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_db import fresh_database, postgres_url  # noqa: F401  (fixture)


@dataclass
class Backend:
    """One store's database, reopenable, with ways to damage it from outside the store."""

    name: str
    open: Callable[[], Any]
    execute: Callable[[str, tuple[Any, ...]], None]  # raw SQL on the database, as an outside hand would

    @property
    def shared(self) -> bool:
        """Whether leases are real (several replicas), not trivially held by one process."""
        return self.name == "postgresql"

    def corrupt_journal(self, run_id: str) -> None:
        """Scribble over every journal payload of ``run_id`` (0xc1 is never valid msgpack)."""
        blob = "x'c1'" if self.name == "sqlite" else "'\\xc1'::bytea"
        self.execute(f"UPDATE commands SET payload = {blob} WHERE run_id = {self._param}", (run_id,))

    def set_meta(self, key: str, value: str) -> None:
        """Overwrite a meta row (e.g. a schema version written by a newer service)."""
        self.execute(f"UPDATE meta SET value = {self._param} WHERE key = {self._param}", (value, key))

    def refuse_payloads_over(self, size: int) -> None:
        """A trigger that fails any journal insert whose payload is larger than ``size`` bytes: a write
        that breaks off in the middle of a transaction, on either database."""
        if self.name == "sqlite":
            self.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON commands WHEN length(NEW.payload) > {size} "
                         "BEGIN SELECT RAISE(ABORT, 'payload refused'); END", ())
            return
        self.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF length(NEW.payload) > "
                     f"{size} THEN RAISE EXCEPTION 'payload refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql", ())
        self.execute("CREATE TRIGGER refuse BEFORE INSERT ON commands FOR EACH ROW EXECUTE FUNCTION refuse()", ())

    @property
    def _param(self) -> str:
        return "?" if self.name == "sqlite" else "%s"


def _sqlite(tmp_path: Path) -> Backend:
    from service.storage.sqlite import SqliteStore

    path = tmp_path / "m.sqlite3"

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(path) as db:
            db.execute(sql, params)

    return Backend("sqlite", lambda: SqliteStore(path), execute)


def _postgres(url: str) -> Backend:
    import psycopg

    from service.storage.postgres import PostgresStore

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql, params)  # type: ignore[arg-type]

    return Backend("postgresql", lambda: PostgresStore(url, connect_timeout_s=3), execute)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store kind in turn, on a fresh file or database."""
    if request.param == "sqlite":
        yield _sqlite(tmp_path)
        return
    with fresh_database() as url:
        yield _postgres(url)


@pytest.fixture
def store(backend: Backend) -> Iterator[Any]:
    """An open store of the backend, closed after the test."""
    opened = backend.open()
    yield opened
    opened.close()
