"""One service per data dir: an exclusive ``flock`` on ``<data-dir>/.lock`` for the process lifetime.

The lock is the first thing ``serve`` takes, before it reads or changes anything in the
data dir (and before wandb runs are opened), so a second service on the same dir exits
with a one-line reason and the first one is untouched. The kernel drops the lock when
the process dies (``kill -9`` included), so a restart never finds a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from service.cli.errors import CliError

LOCK_NAME = ".lock"


class DataDirLock:
    """An exclusive, non-blocking lock on a data dir (held until ``release`` or exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock; raises CliError naming the holder when another process has it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 (held for the process lifetime)
        except OSError as exc:
            raise CliError(f"data dir {self.path.parent} is not usable: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CliError(f"data dir {self.path.parent} is in use by another linnaeus-metrics service "
                           f"(pid {holder}); one data dir serves one service") from exc
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process exits)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
