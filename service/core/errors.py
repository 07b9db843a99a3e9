"""Domain errors of the service core. Core errors carry no HTTP codes (api/errors.py maps them).

    ServiceError
    ├── InvalidInput            a value the caller sent is wrong (names the field and value)
    │   └── ConfigError         the METRICS / EXPERIMENT section is invalid
    ├── NotFound
    │   ├── UnknownRun
    │   └── UnknownSession
    ├── Conflict                the request contradicts the run's state
    │   ├── RunConflict         same run id, different spec
    │   ├── RunQuarantined      the run's journal cannot be replayed; its data is kept as it is
    │   ├── SessionFenced       a newer session of the rank exists
    │   ├── SequenceGap         events skipped a sequence number
    │   ├── StepAlreadyCompleted
    │   └── RunFinished
    ├── IncompatibleState       a snapshot that does not fit this run
    │   └── SnapshotVersionMismatch
    ├── CheckpointPending       not every rank's marker is in yet
    ├── LimitExceeded           a configured bound was hit
    ├── NotOwner                another replica owns the run (its URL, or None while it moves)
    └── StoreError              the durable store (service/storage) refused or failed
        ├── StoreUnavailable    the store cannot take writes (disk full, database down)
        ├── StoreFenced         the writer's lease on the run is lost (another replica owns it)
        └── StoreDamaged        one run's stored data cannot be decoded (that run only)
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""


class InvalidInput(ServiceError):
    """A value the caller sent is wrong."""


class ConfigError(InvalidInput):
    """The training config's METRICS or EXPERIMENT section is invalid."""


class NotFound(ServiceError):
    """Something named by the caller does not exist."""


class UnknownRun(NotFound):
    """No run with that id."""


class UnknownSession(NotFound):
    """No session with that id in the run."""


class Conflict(ServiceError):
    """The request contradicts the run's current state."""


class RunQuarantined(Conflict):
    """The run's stored journal cannot be replayed: it is refused (never re-created over its data)."""


class RunConflict(Conflict):
    """A run with the same id exists with a different spec."""


class SessionFenced(Conflict):
    """A newer session of the same rank fenced this one."""


class SequenceGap(Conflict):
    """Events skipped a sequence number."""

    def __init__(self, message: str, expected_seq: int) -> None:
        super().__init__(message)
        self.expected_seq = expected_seq


class StepAlreadyCompleted(Conflict):
    """A train record arrived for a step its rank had already completed."""


class RunFinished(Conflict):
    """The run is finished and takes no more events."""


class IncompatibleState(ServiceError):
    """A snapshot that does not fit this run."""


class SnapshotVersionMismatch(IncompatibleState):
    """A snapshot written by an incompatible schema version."""


class CheckpointPending(ServiceError):
    """Not every rank's checkpoint marker is in yet."""

    def __init__(self, message: str, missing_ranks: list[int]) -> None:
        super().__init__(message)
        self.missing_ranks = missing_ranks


class LimitExceeded(ServiceError):
    """A configured limit was hit."""


class NotOwner(ServiceError):
    """Another replica owns the run: writes go there (DESIGN §10).

    ``owner_url`` is the owner's advertised URL, or None while no replica holds the run
    (the caller retries).
    """

    def __init__(self, message: str, owner_url: str | None) -> None:
        super().__init__(message)
        self.owner_url = owner_url


class StoreError(ServiceError):
    """The durable store refused or failed."""


class StoreUnavailable(StoreError):
    """The durable store cannot take writes (disk full, corrupt file, database down)."""


class StoreFenced(StoreError):
    """A write carried a fencing token that is not the run's current, unexpired lease.

    The writer lost its lease (it was paused, partitioned or slow, and another replica
    took the run over): it must stop writing for that run.
    """


class StoreDamaged(StoreError):
    """One run's stored data cannot be decoded; the other runs are not affected."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id
