"""Checkpoints on the wire: waiting for a consistent cut, restoring one, the state dict.

``MetricsClient.state_dict`` returns ``{"format", "version", "run_id", "rank",
"snapshot"}`` (plain builtins, so ``torch.save``/``torch.load(weights_only=True)`` keep
it as is); the snapshot is the service's, opaque here except for this rank's position at
the cut, ``snapshot["cut"]["ranks"][i]`` with ``rank``, ``completed``, ``last_step``
(and, if present, ``ended``: ``{phase: [epochs]}``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from client._errors import CheckpointTimeout, InvalidStateDict, InvalidType, ServiceUnavailable
from client._transport import Backoff, Reply, Transport, call_until

STATE_FORMAT = "linnaeus-metrics/client-state"
STATE_VERSION = 1
MAX_WAIT_CHUNK_S = 10.0


@dataclass(frozen=True)
class RankPosition:
    """Where one rank stood at a cut (-1: before its first step)."""

    last_step: int = -1
    completed: int = -1
    ended: dict[str, set[int]] = field(default_factory=dict)


def state_envelope(run_id: str, rank: int, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The dict ``state_dict()`` returns."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "run_id": run_id,
        "rank": rank,
        "snapshot": snapshot,
    }


def check_state_dict(state_dict: Any, run_id: str) -> dict[str, Any]:
    """The snapshot of a state dict of run ``run_id``; raises naming what is wrong."""
    if not isinstance(state_dict, Mapping):
        raise InvalidType(
            f"state_dict: expected the dict state_dict() returned, got {type(state_dict).__name__}"
        )
    expected = {"format": STATE_FORMAT, "version": STATE_VERSION, "run_id": run_id}
    for key, value in expected.items():
        if state_dict.get(key) != value:
            raise InvalidStateDict(
                f"state_dict[{key!r}]: expected {value!r}, got {state_dict.get(key)!r}"
            )
    snapshot = state_dict.get("snapshot")
    if not isinstance(snapshot, Mapping):
        raise InvalidStateDict(
            f"state_dict['snapshot']: expected a dict, got {type(snapshot).__name__}"
        )
    return dict(snapshot)


def await_snapshot(
    transport: Transport, run_id: str, ckpt: str, deadline: float, backoff: Backoff
) -> dict[str, Any]:
    """GET the checkpoint's snapshot, waiting in chunks of at most 10 s until ``deadline``.

    Raises:
        CheckpointTimeout: naming the ranks missing in the service's last 408 answer.
        ServiceRejected: the service refused the request.
    """
    path = f"/v1/runs/{run_id}/checkpoints/{quote(ckpt, safe='')}"
    pause = threading.Event()
    missing: list[int] | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        wait_s = min(MAX_WAIT_CHUNK_S, remaining)
        started = time.monotonic()
        reply = _get(transport, path, wait_s)
        if reply is not None and reply.ok and isinstance(reply.payload, dict):
            return reply.payload
        if reply is not None and reply.error_type == "checkpoint_pending":
            missing = int_list(_mapping(reply.payload).get("missing_ranks"))
        elif reply is not None and not reply.transient:
            raise reply.error()
        if time.monotonic() - started < wait_s / 2:  # failed or answered early: do not spin
            pause.wait(min(backoff.next_delay(), max(deadline - time.monotonic(), 0.0)))
    what = f"ranks {missing} had not reached it" if missing is not None else "no answer"
    raise CheckpointTimeout(f"checkpoint {ckpt!r}: {what} by the deadline", ckpt, missing or [])


def _get(transport: Transport, path: str, wait_s: float) -> Reply | None:
    try:
        params = {"wait_s": round(wait_s, 3)}
        return transport.request("GET", path, params=params, timeout_s=wait_s + transport.timeout_s)
    except ServiceUnavailable:
        return None


def post_restore(
    transport: Transport,
    run_id: str,
    session: str,
    snapshot: dict[str, Any],
    deadline: float,
    backoff: Backoff,
) -> None:
    """POST the restore, retrying while the service is unavailable until ``deadline``."""
    body = {"session": session, "snapshot": snapshot}
    path = f"/v1/runs/{run_id}/restore"
    call_until(deadline, backoff, lambda: transport.call("POST", path, json=body))


def rank_position(snapshot: Mapping[str, Any], rank: int) -> RankPosition:
    """This rank's position at the snapshot's cut (all -1 if the snapshot has none)."""
    entry = _rank_entry(snapshot, rank)
    ended = entry.get("ended")
    return RankPosition(
        last_step=_int_or(entry.get("last_step"), -1),
        completed=_int_or(entry.get("completed"), -1),
        ended={str(p): set(int_list(e)) for p, e in _mapping(ended).items()},
    )


def _rank_entry(snapshot: Mapping[str, Any], rank: int) -> Mapping[str, Any]:
    ranks = _mapping(snapshot.get("cut")).get("ranks")
    if not isinstance(ranks, list):
        return {}
    for entry in ranks:
        if isinstance(entry, Mapping) and entry.get("rank") == rank:
            return entry
    entry = ranks[rank] if rank < len(ranks) else None  # a list indexed by rank
    return entry if isinstance(entry, Mapping) and "rank" not in entry else {}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def int_list(value: Any) -> list[int]:
    """The ints of a list (anything else: empty)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
