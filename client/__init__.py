"""linnaeus-metrics client: what a training process imports to report its metrics.

>>> from client import MetricsClient  # doctest: +SKIP
>>> mc = MetricsClient("http://metrics:8000", "exp42", rank=0, world_size=1,
...                    tasks={"species": 1000}, total_steps=10_000)  # doctest: +SKIP

See ``MetricsClient`` for the API and ``client._errors`` for the exception tree. The wire
format shared with the service lives in ``client._wire``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {"STATE_FORMAT": "_checkpoint", "STATE_VERSION": "_checkpoint", "MetricsClient": "_client",
          "TaskInfo": "_wire"}


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the service can import the wire format (client._wire)
    # without loading the HTTP client and its dependencies.
    if name not in __all__:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"client.{_HOMES.get(name, '_errors')}"), name)
    globals()[name] = value
    return value
