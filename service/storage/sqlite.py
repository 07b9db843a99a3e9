"""The embedded durable store: SQLite in WAL mode under the data dir.

Tables: ``commands`` (the journal: every accepted command of every run, msgpack, in
order), ``images`` (one compact recovery image per run, replacing the journal before
it) and ``blobs`` (checkpoint snapshots and restore bases). A command is acknowledged
only after its transaction committed (``synchronous=FULL`` by default), so it survives
``kill -9`` of the service and, with FULL, a power cut.

The WAL is checkpointed into the main file every ``WAL_CHECKPOINT_BYTES`` of log (and by
``checkpoint_wal`` on a timer and at close), so the main file alone holds nearly everything:
with 64 KiB pages SQLite's default (1,000 pages) would leave up to 64 MiB in the WAL only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.core.errors import StoreUnavailable
from service.storage.base import StoredRun
from service.storage.codec import decode_document, decode_run, load_all, pack
from service.storage.lease import Lease

log = logging.getLogger("linnaeus_metrics.storage")
SCHEMA_VERSION = 1
PAGE_BYTES = 65_536
WAL_CHECKPOINT_BYTES = 4 * 2**20
PROBE_BYTES = 65_536
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS commands_run ON commands (run_id, id);
CREATE TABLE IF NOT EXISTS images (run_id TEXT PRIMARY KEY, command_id INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    run_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (run_id, kind, key));
"""


class SqliteStore:
    """One connection, one lock: writes are short transactions, serialised (a ``Store``)."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # journal rows are whole delivery bodies (often MBs): large pages copy and checksum them
            # in a fraction of the time of 4 KiB ones; it only takes effect on a new file
            self._db.execute(f"PRAGMA page_size={PAGE_BYTES}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._db.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_CHECKPOINT_BYTES // page)}")
            self._db.executescript(SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"store {path}: cannot open ({exc})") from exc

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise StoreUnavailable(f"store {self.path}: schema version {row[0]}, this service reads {SCHEMA_VERSION}")

    def append(self, run_id: str, command: str, payload: Mapping[str, Any], *, token: int | None = None) -> int:
        """Make one command durable; returns its id (``token``: see ``acquire``)."""
        return self.append_many(run_id, command, [payload])

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]], *,
                    token: int | None = None) -> int:
        """Make several commands durable in one transaction (one WAL sync); returns the last id."""
        bodies = [pack(dict(payload)) for payload in payloads]
        with self._lock:
            return self._transaction([("INSERT INTO commands (run_id, kind, payload) VALUES (?, ?, ?)",
                                       (run_id, command, body)) for body in bodies])

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any], *,
                    token: int | None = None) -> None:
        """Replace the run's journal up to ``command_id`` by ``image`` (one transaction)."""
        body = pack(dict(image))
        with self._lock:
            self._transaction([
                ("INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (run_id, command_id, body)),
                ("DELETE FROM commands WHERE run_id = ? AND id <= ?", (run_id, command_id)),
            ])

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any], *,
                 token: int | None = None) -> None:
        """Store a snapshot-like document."""
        with self._lock:
            self._write("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", (run_id, kind, key, pack(dict(value))))

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document, or None."""
        with self._lock:
            row = self._db.execute("SELECT body FROM blobs WHERE run_id=? AND kind=? AND key=?",
                                   (run_id, kind, key)).fetchone()
        return None if row is None else decode_document(run_id, f"{kind} {key!r}", row[0])

    def delete_run(self, run_id: str, *, token: int | None = None) -> None:
        """Remove everything of a run."""
        with self._lock:
            self._transaction([(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                               for table in ("commands", "images", "blobs")])

    def run_ids(self) -> list[str]:
        """Every stored run, in creation order."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT run_id FROM (SELECT run_id, MIN(id) AS first FROM commands GROUP BY run_id "
                "UNION ALL SELECT run_id, command_id FROM images) GROUP BY run_id ORDER BY MIN(first)")]

    def load(self) -> Iterator[StoredRun]:
        """Every run, in creation order, for recovery; a run whose rows cannot be read comes with
        its ``damage`` and the others still come."""
        yield from load_all(self.run_ids(), self.load_run, (sqlite3.DatabaseError,))

    def load_run(self, run_id: str) -> StoredRun:
        """One run's image and the journal after it; StoreDamaged names a row that cannot be decoded."""
        with self._lock:
            image_row = self._db.execute("SELECT body FROM images WHERE run_id=?", (run_id,)).fetchone()
            rows = self._db.execute("SELECT id, kind, payload FROM commands WHERE run_id=? ORDER BY id",
                                    (run_id,)).fetchall()
        return decode_run(run_id, None if image_row is None else image_row[0], rows)

    # ------------------------------------------------------------ leases (one process: always held)

    def acquire(self, run_id: str, owner: str, url: str, ttl_s: float) -> Lease | None:
        """The run's lease: one process owns every run of its data dir, so it is always granted."""
        lease = Lease(run_id, owner, url, 0, ttl_s)
        self._leases[run_id] = lease
        return lease

    def renew(self, lease: Lease) -> Lease:
        """The same lease (nobody else can take it)."""
        return lease

    def release(self, lease: Lease) -> None:
        """Forget the lease."""
        self._leases.pop(lease.run_id, None)

    def owner_of(self, run_id: str) -> Lease | None:
        """The lease this process took for ``run_id``, if any."""
        return self._leases.get(run_id)

    def probe(self) -> None:
        """Prove the store takes durable writes: a committed probe row and a file written and
        fsynced beside the database (both need new space, so a full disk fails them).

        Raises:
            StoreUnavailable: the disk is full, the file is damaged or the directory is unwritable.
        """
        probe_file = self.path.parent / ".write-probe"
        try:
            with open(probe_file, "wb") as handle:  # fresh blocks: a full disk refuses them
                handle.write(os.urandom(PROBE_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StoreUnavailable(f"store {self.path}: cannot write {probe_file.name} ({exc})") from exc
        finally:
            probe_file.unlink(missing_ok=True)
        key = repr(time.time())
        with self._lock:
            # the new row is inserted before the old one goes, so it needs pages of its own
            self._transaction([
                ("INSERT INTO blobs VALUES ('', 'probe', ?, zeroblob(?))", (key, PROBE_BYTES)),
                ("DELETE FROM blobs WHERE run_id = '' AND kind = 'probe' AND key != ?", (key,)),
            ])

    def checkpoint_wal(self, truncate: bool = False) -> None:
        """Copy the WAL into the main file (PASSIVE: never waits for readers; TRUNCATE at close)."""
        mode = "TRUNCATE" if truncate else "PASSIVE"
        with self._lock:
            try:
                self._db.execute(f"PRAGMA wal_checkpoint({mode})")
            except sqlite3.Error as exc:
                log.warning("store %s: WAL checkpoint failed: %s", self.path, exc)

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        self.checkpoint_wal(truncate=True)
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self.path}: write failed ({exc})") from exc

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        """Run ``statements`` in one transaction; returns the rowid the last one inserted (0: none)."""
        last = 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                last = int(self._db.execute(sql, params).lastrowid or last)
            self._db.execute("COMMIT")
            return last
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"store {self.path}: write failed ({exc})") from exc
