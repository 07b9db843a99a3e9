"""linnaeus-metrics client: what a training process imports to report its metrics.

>>> from client import MetricsClient  # doctest: +SKIP
>>> mc = MetricsClient("http://metrics:8000", "exp42", rank=0, world_size=1,
...                    tasks={"species": 1000}, total_steps=10_000)  # doctest: +SKIP

See ``MetricsClient`` for the API and ``client._errors`` for the exception tree. The wire
format shared with the service lives in ``client._wire``.
"""

from client._checkpoint import STATE_FORMAT, STATE_VERSION
from client._client import MetricsClient
from client._errors import (
    CheckpointTimeout,
    ClientClosed,
    ClientError,
    InvalidRecord,
    InvalidStateDict,
    InvalidType,
    InvalidValue,
    ServiceRejected,
    ServiceUnavailable,
    SessionFenced,
    StepAlreadyCompleted,
)
from client._wire import TaskInfo

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "CheckpointTimeout",
    "ClientClosed",
    "ClientError",
    "InvalidRecord",
    "InvalidStateDict",
    "InvalidType",
    "InvalidValue",
    "MetricsClient",
    "ServiceRejected",
    "ServiceUnavailable",
    "SessionFenced",
    "StepAlreadyCompleted",
    "TaskInfo",
]
