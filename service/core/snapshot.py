"""Portable, versioned snapshots of a run at a cut (DESIGN §3b).

A snapshot is a plain JSON-safe dict: ``format``, ``version``, ``run_id``, the run's
``spec``, the ``cut`` (every rank's position), the ``state`` and a ``snapshot_id``
(sha256 of spec and state) that both identifies it and detects tampering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from client._wire import WireError
from service.core.errors import IncompatibleState, SnapshotVersionMismatch
from service.core.run_state import RunState
from service.core.spec import RunSpec

FORMAT = "linnaeus-metrics/snapshot"
VERSION = 1


def make_snapshot(spec: RunSpec, state: Mapping[str, Any], checkpoint_id: str | None = None) -> dict[str, Any]:
    """Wrap a state dict (``RunState.to_dict()``) into a snapshot."""
    body = {"spec": spec.to_dict(), "state": state}
    return {
        "format": FORMAT,
        "version": VERSION,
        "run_id": spec.run_id,
        "checkpoint_id": checkpoint_id,
        "snapshot_id": _digest(body),
        "cut": {"watermark": state["watermark"],
                "ranks": [{"rank": i, "completed": r["completed"], "last_step": r["last_step"]}
                          for i, r in enumerate(state["ranks"])]},
        **body,
    }


def open_snapshot(snapshot: Any, spec: RunSpec) -> RunState:
    """Check a snapshot against the run and rebuild its state.

    Raises:
        SnapshotVersionMismatch: another format or version.
        IncompatibleState: another run, another spec, a damaged body.
    """
    if not isinstance(snapshot, Mapping) or snapshot.get("format") != FORMAT:
        raise SnapshotVersionMismatch(f"snapshot.format: expected {FORMAT!r}, got {_get(snapshot, 'format')!r}")
    if snapshot.get("version") != VERSION:
        raise SnapshotVersionMismatch(
            f"snapshot.version: this service reads version {VERSION}, got {snapshot.get('version')!r}")
    if snapshot.get("run_id") != spec.run_id:
        raise IncompatibleState(f"snapshot.run_id: snapshot of run {snapshot.get('run_id')!r}, not {spec.run_id!r}")
    if snapshot.get("spec") != spec.to_dict():
        raise IncompatibleState(f"snapshot.spec: the snapshot's run spec differs from run {spec.run_id!r}'s")
    try:
        digest = _digest({"spec": snapshot["spec"], "state": snapshot.get("state")})
    except (TypeError, ValueError) as exc:  # NaN or infinities: never written by this service
        raise IncompatibleState(f"snapshot.state: not a snapshot this service wrote ({exc})") from exc
    if digest != snapshot.get("snapshot_id"):
        raise IncompatibleState("snapshot.snapshot_id: the snapshot is damaged (its digest does not match)")
    try:
        return RunState.from_dict(spec, snapshot["state"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, WireError) as exc:
        raise IncompatibleState(f"snapshot.state: cannot be read ({type(exc).__name__}: {exc})"[:500]) from exc


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else type(obj).__name__
