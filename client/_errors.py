"""Exceptions raised by the client: one tree, rooted at ``ClientError``.

```
ClientError
├── InvalidValue (also ValueError)        misuse: an argument has a bad value
│   ├── InvalidRecord                     a log_*() record is wrong (task, shape, class, NaN, step)
│   │   └── StepAlreadyCompleted          a train record for a step this rank already completed
│   ├── InvalidStateDict                  load_state_dict() got a state that is not this run's
│   └── ClientClosed                      the client was used after close()
├── InvalidType (also TypeError)          misuse: an argument has the wrong type
├── ServiceUnavailable                    no usable answer in time (network, 5xx, 408, 429)
├── ServiceRejected                       the service refused a request for good (4xx)
│   └── SessionFenced                     a newer session of this rank exists (409 session_fenced)
└── CheckpointTimeout                     state_dict(): not every rank's marker arrived in time
```

Misuse errors are raised at once by the call that was misused. Service trouble never
surfaces from ``log_*()``; only the synchronous calls (``state_dict``,
``load_state_dict``) raise ``ServiceUnavailable``, ``ServiceRejected`` or
``CheckpointTimeout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ClientError(Exception):
    """Base of every exception raised by the client."""


class InvalidValue(ClientError, ValueError):
    """An argument has a bad value; the message names the argument and the value."""


class InvalidRecord(InvalidValue):
    """A record passed to a ``log_*()`` method is invalid for this run."""


class StepAlreadyCompleted(InvalidRecord):
    """A train batch or scalar was logged for a step this rank already completed."""


class InvalidStateDict(InvalidValue):
    """``load_state_dict()`` got a state dict of another format, version or run."""


class ClientClosed(InvalidValue):
    """The client was used after ``close()``."""


class InvalidType(ClientError, TypeError):
    """An argument has the wrong type; the message names the argument and the type."""


class ServiceUnavailable(ClientError):
    """The service gave no usable answer in time.

    Attributes:
        status_code: the HTTP status of a transient reply (5xx, 408, 429), or None when
            no reply arrived (connection refused or reset, timeout).
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServiceRejected(ClientError):
    """The service refused a request; repeating it would not help.

    Attributes:
        status_code: the HTTP status of the reply.
        error_type: the ``type`` of the service's error body (e.g. ``run_conflict``).
        detail: the service's explanation.
        payload: the whole error body.
    """

    def __init__(self, status_code: int, error_type: str, detail: str, payload: Any = None) -> None:
        super().__init__(f"service refused the request ({status_code} {error_type}): {detail}")
        self.status_code = status_code
        self.error_type = error_type
        self.detail = detail
        self.payload = payload


class SessionFenced(ServiceRejected):
    """A newer session of this rank exists; this client can no longer write."""


class CheckpointTimeout(ClientError):
    """Not every rank's checkpoint marker arrived before the deadline.

    Attributes:
        checkpoint_id: the checkpoint that was awaited.
        missing_ranks: the ranks whose marker the service had not seen.
    """

    def __init__(self, message: str, checkpoint_id: str, missing_ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.checkpoint_id = checkpoint_id
        self.missing_ranks = list(missing_ranks)
