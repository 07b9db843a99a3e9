"""The shared durable store: PostgreSQL, for several replicas of the service (DESIGN §10).

The same documents as the SQLite store (``commands``: the journal; ``images``: one
recovery image per run replacing the journal before it; ``blobs``: checkpoints and
restore bases) plus ``leases``: which replica owns each run, until when, with which
fencing token. Every write for a run carries the writer's token and, in its own
transaction, first takes ``SELECT ... FOR SHARE`` on the run's lease row: it goes ahead
only if the token is the current one and the lease is unexpired on the database's clock.
A takeover updates that row, so it waits for writes in flight to commit; the new owner's
recovery then sees every write acknowledged under the old token, and no later one is
accepted.

The connection is opened lazily and re-opened after a failure: while PostgreSQL cannot be
reached every call raises StoreUnavailable (the service answers 503 and is not ready).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from service.core.errors import StoreFenced, StoreUnavailable
from service.storage.base import StoredRun
from service.storage.codec import decode_document, decode_run, load_all, pack
from service.storage.lease import Lease

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x6C6D_7363  # advisory lock id: replicas starting together create the schema once
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS commands (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "run_id text NOT NULL, kind text NOT NULL, payload bytea NOT NULL)",
    "CREATE INDEX IF NOT EXISTS commands_run ON commands (run_id, id)",
    "CREATE TABLE IF NOT EXISTS images (run_id text PRIMARY KEY, command_id bigint NOT NULL, body bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blobs (run_id text NOT NULL, kind text NOT NULL, key text NOT NULL, "
    "body bytea NOT NULL, PRIMARY KEY (run_id, kind, key))",
    "CREATE TABLE IF NOT EXISTS leases (run_id text PRIMARY KEY, owner text NOT NULL, url text NOT NULL, "
    "token bigint NOT NULL, expires_at timestamptz NOT NULL)",
)
RUN_IDS = ("SELECT run_id FROM (SELECT run_id, MIN(id) AS first FROM commands GROUP BY run_id "
           "UNION ALL SELECT run_id, command_id FROM images) AS t GROUP BY run_id ORDER BY MIN(first)")
# a takeover (new owner, or the lease expired) raises the token; the holder re-acquiring keeps it
ACQUIRE = """
INSERT INTO leases AS l (run_id, owner, url, token, expires_at)
VALUES (%(run)s, %(owner)s, %(url)s, 1, clock_timestamp() + %(ttl)s * interval '1 second')
ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, url = EXCLUDED.url,
    token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > clock_timestamp() THEN l.token ELSE l.token + 1 END,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner
RETURNING token"""
RENEW = ("UPDATE leases SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second' "
         "WHERE run_id = %(run)s AND owner = %(owner)s AND token = %(token)s AND expires_at > clock_timestamp() "
         "RETURNING token")
FENCE = ("SELECT 1 FROM leases WHERE run_id = %s AND token = %s AND expires_at > clock_timestamp() FOR SHARE")


class PostgresStore:
    """One connection under one lock, transactions short; the schema is created and checked on open.

    Args:
        url: a libpq connection URL (``postgresql://user@host:5432/db``).
        connect_timeout_s: how long to wait for a connection before calling the store unavailable.
        statement_timeout_s: the longest a statement may run (a stuck database becomes a 503, not a hang).

        connect: connect (and create or check the schema) now; otherwise at the first use, so a
            service can start while the database is still down.

    Raises:
        StoreUnavailable: the database cannot be reached, or holds a newer schema than this service reads.
    """

    def __init__(self, url: str, connect_timeout_s: float = 5.0, statement_timeout_s: float = 30.0,
                 connect: bool = True) -> None:
        self.url = url
        self.where = describe(url)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._lock = threading.Lock()
        self._db: psycopg.Connection[Any] | None = None
        self._schema_ready = False
        if connect:
            try:
                with self._session():
                    pass
            except StoreUnavailable:
                self.close()
                raise

    def _create_schema(self, db: psycopg.Connection[Any]) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA:
                db.execute(statement)
            self._check_schema(db)
        self._schema_ready = True

    def _check_schema(self, db: psycopg.Connection[Any]) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', %s), ('probe', '')", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreUnavailable(f"store {self.where}: schema version {row[0]} is newer than this service's "
                                   f"{SCHEMA_VERSION}; upgrade the service")

    # ------------------------------------------------------------ connection

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection (re-opened when lost), under the lock; database failures become StoreUnavailable."""
        with self._lock:
            try:
                if self._db is None or self._db.closed or self._db.broken:
                    self._db = self._connect()
                if not self._schema_ready:
                    self._create_schema(self._db)
                yield self._db
            except psycopg.Error as exc:
                self._drop()
                raise StoreUnavailable(f"store {self.where}: {_reason(exc)}") from exc

    def _connect(self) -> psycopg.Connection[Any]:
        timeout_ms = int(self.statement_timeout_s * 1000)
        # keepalives and tcp_user_timeout: a database cut off mid-statement is noticed in seconds
        return psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s)),
                               options=f"-c statement_timeout={timeout_ms}", keepalives=1, keepalives_idle=5,
                               keepalives_interval=2, keepalives_count=2, tcp_user_timeout=timeout_ms)

    def _drop(self) -> None:
        if self._db is not None and (self._db.broken or self._db.closed or self._db.info.transaction_status != 0):
            self._db.close()
            self._db = None

    @contextmanager
    def _write(self, run_id: str, token: int | None) -> Iterator[psycopg.Connection[Any]]:
        """A transaction that goes ahead only while ``token`` is the run's current, unexpired lease."""
        if token is None:
            raise StoreFenced(f"run {run_id!r}: a write to the shared store needs the run's lease token (got None)")
        with self._session() as db, db.transaction():
            if db.execute(FENCE, (run_id, token)).fetchone() is None:
                raise StoreFenced(self._fenced(db, run_id, token))
            yield db

    @staticmethod
    def _fenced(db: psycopg.Connection[Any], run_id: str, token: int) -> str:
        row = db.execute("SELECT owner, token, expires_at > clock_timestamp() FROM leases WHERE run_id = %s",
                         (run_id,)).fetchone()
        if row is None:
            return f"run {run_id!r}: write with token {token} refused: nobody holds the run's lease"
        state = "held" if row[2] else "expired"
        return f"run {run_id!r}: write with token {token} refused: the lease is token {row[1]} ({state}, {row[0]!r})"

    # ------------------------------------------------------------ journal, images, blobs

    def append(self, run_id: str, command: str, payload: Mapping[str, Any], *, token: int | None = None) -> int:
        """Make one command durable; returns its id.

        Raises:
            StoreFenced: ``token`` is not the run's current, unexpired lease.
            StoreUnavailable: the database cannot take the write.
        """
        return self.append_many(run_id, command, [payload], token=token)

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]], *,
                    token: int | None = None) -> int:
        """Make several commands durable in one transaction (one commit); returns the last id.

        Raises:
            StoreFenced: ``token`` is not the run's current, unexpired lease.
            StoreUnavailable: the database cannot take the write.
        """
        bodies = [pack(dict(payload)) for payload in payloads]
        last = 0
        with self._write(run_id, token) as db:
            for body in bodies:
                row = db.execute("INSERT INTO commands (run_id, kind, payload) VALUES (%s, %s, %s) RETURNING id",
                                 (run_id, command, body)).fetchone()
                assert row is not None
                last = int(row[0])
        return last

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any], *,
                    token: int | None = None) -> None:
        """Replace the run's journal up to ``command_id`` by ``image`` (one transaction)."""
        body = pack(dict(image))
        with self._write(run_id, token) as db:
            db.execute("INSERT INTO images VALUES (%s, %s, %s) ON CONFLICT (run_id) DO UPDATE "
                       "SET command_id = EXCLUDED.command_id, body = EXCLUDED.body", (run_id, command_id, body))
            db.execute("DELETE FROM commands WHERE run_id = %s AND id <= %s", (run_id, command_id))

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any], *,
                 token: int | None = None) -> None:
        """Store a snapshot-like document."""
        with self._write(run_id, token) as db:
            db.execute("INSERT INTO blobs VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, kind, key) DO UPDATE "
                       "SET body = EXCLUDED.body", (run_id, kind, key, pack(dict(value))))

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document, or None."""
        with self._session() as db, db.cursor(binary=True) as cur:
            row = cur.execute("SELECT body FROM blobs WHERE run_id = %s AND kind = %s AND key = %s",
                              (run_id, kind, key)).fetchone()
        return None if row is None else decode_document(run_id, f"{kind} {key!r}", row[0])

    def delete_run(self, run_id: str, *, token: int | None = None) -> None:
        """Remove everything of a run but its lease row (its token must keep growing)."""
        with self._write(run_id, token) as db:
            for table in ("commands", "images", "blobs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))

    def run_ids(self) -> list[str]:
        """Every stored run, in creation order."""
        with self._session() as db:
            return [str(r[0]) for r in db.execute(RUN_IDS)]

    def load(self) -> Iterator[StoredRun]:
        """Every run, in creation order, for recovery; a run whose rows cannot be read comes with
        its ``damage`` and the others still come."""
        yield from load_all(self.run_ids(), self.load_run)

    def load_run(self, run_id: str) -> StoredRun:
        """One run's image and the journal after it; StoreDamaged names a row that cannot be decoded."""
        with self._session() as db, db.transaction(), db.cursor(binary=True) as cur:
            # one snapshot for both reads: an image written in between must not hide the rows it replaced
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            image = cur.execute("SELECT body FROM images WHERE run_id = %s", (run_id,)).fetchone()
            rows = cur.execute("SELECT id, kind, payload FROM commands WHERE run_id = %s ORDER BY id",
                               (run_id,)).fetchall()
        return decode_run(run_id, None if image is None else image[0], rows)

    # ------------------------------------------------------------ leases

    def acquire(self, run_id: str, owner: str, url: str, ttl_s: float) -> Lease | None:
        """Take the run's lease if it is free or expired (or already ``owner``'s); None while another holds it."""
        with self._session() as db:
            row = db.execute(ACQUIRE, {"run": run_id, "owner": owner, "url": url, "ttl": ttl_s}).fetchone()
        return None if row is None else Lease(run_id, owner, url, int(row[0]), ttl_s)

    def renew(self, lease: Lease) -> Lease:
        """Extend a held lease by its TTL.

        Raises:
            StoreFenced: the lease expired or another replica took the run over.
        """
        with self._session() as db:
            row = db.execute(RENEW, {"run": lease.run_id, "owner": lease.owner, "token": lease.token,
                                     "ttl": lease.ttl_s}).fetchone()
            if row is None:
                raise StoreFenced(self._fenced(db, lease.run_id, lease.token))
        return lease

    def release(self, lease: Lease) -> None:
        """Give the run up now (another replica may take it at once); a lease no longer held is left alone."""
        with self._session() as db:
            db.execute("UPDATE leases SET owner = '', url = '', expires_at = clock_timestamp() "
                       "WHERE run_id = %s AND token = %s", (lease.run_id, lease.token))

    def owner_of(self, run_id: str) -> Lease | None:
        """The run's unexpired lease (``ttl_s``: the time it has left), or None."""
        with self._session() as db:
            row = db.execute("SELECT owner, url, token, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) "
                             "FROM leases WHERE run_id = %s AND expires_at > clock_timestamp()", (run_id,)).fetchone()
        return None if row is None else Lease(run_id, str(row[0]), str(row[1]), int(row[2]), float(row[3]))

    # ------------------------------------------------------------ health

    def probe(self) -> None:
        """A real, committed write: raises StoreUnavailable while the database cannot take writes."""
        with self._session() as db, db.transaction():
            db.execute("UPDATE meta SET value = %s WHERE key = 'probe'", (repr(time.time()),))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def describe(url: str) -> str:
    """``host:port/dbname`` of a connection URL, without credentials (for messages and logs)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (unparsable URL)"
    return f"postgresql {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _reason(exc: psycopg.Error) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else 'no detail'}"
