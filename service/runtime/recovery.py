"""Rebuilding runs from the store after a restart: latest image, then replay of the journal.

Replay applies the same core commands as the live path (without appending them again), so
recovery follows exactly the code that produced the state. Emissions replayed were handed
to the sinks before the restart and are dropped here; finished runs stay closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from client._wire import decode_event, decode_events, unpack_body
from service.core.alerts import Alert
from service.core.run_commands import Run
from service.core.spec import parse_spec
from service.storage.base import StoredRun

if TYPE_CHECKING:
    from service.runtime.host import RunHost


def recover(host: RunHost, stored_runs: Iterable[StoredRun]) -> int:
    """Rebuild every stored run into ``host``; returns the count."""
    count = 0
    for stored in stored_runs:
        run = _from_image(host, stored) if stored.image is not None else None
        for command_id, kind, payload in stored.commands:
            run = _replay(host, run, kind, payload)
            host.note_replayed(stored.run_id, command_id)
        if run is None:
            continue
        run.state.drain()
        run.new_alerts.clear()  # handed out (stream, log, wandb) before the restart
        _persist_checkpoints(host, run)
        if not run.state.finished:
            host.open_sinks(run)
        count += 1
    return count


def _persist_checkpoints(host: RunHost, run: Run) -> None:
    """Checkpoints taken again by the replay: a crash may have come between a delivery's
    append and its checkpoint's blob (writing one again is harmless)."""
    for checkpoint_id in run.new_checkpoints:
        if host.store is not None and host.store.get_blob(run.spec.run_id, "checkpoint", checkpoint_id) is None:
            host.store.put_blob(run.spec.run_id, "checkpoint", checkpoint_id, run.checkpoints[checkpoint_id])
    run.new_checkpoints.clear()


def _from_image(host: RunHost, stored: StoredRun) -> Run:
    image: Mapping[str, Any] = stored.image or {}
    spec = parse_spec(image["spec"])
    base = None if image["generation"] is None else _blob(host, spec.run_id, "base", image["generation"])
    checkpoints = {c: b for c in image["checkpoint_ids"] if (b := _blob(host, spec.run_id, "checkpoint", c))}
    run = Run.from_image(spec, image, base, checkpoints)
    run.state.book.max_points = host.history_max_points
    return host.hold(run, open_sinks=False)


def _blob(host: RunHost, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
    return None if host.store is None else host.store.get_blob(run_id, kind, key)


def _replay(host: RunHost, run: Run | None, kind: str, payload: Mapping[str, Any]) -> Run | None:
    if kind == "create":
        created = host.add(parse_spec(payload["spec"]), open_sinks=False)
        created.created_at = created.updated_at = payload.get("created_at")
        return created
    if run is None:
        raise ValueError(f"journal: a {kind!r} command before the run's create")
    if kind == "session":
        run.open_session(int(payload["rank"]), str(payload["session"]))
        run.seen(int(payload["rank"]), payload.get("at"))
    elif kind == "events":
        if "body" in payload:
            events = decode_events(unpack_body(payload["body"], payload["content_type"])["events"])
        else:
            events = [decode_event(e) for e in payload["events"]]
        run.deliver(str(payload["session"]), int(payload["seq"]), events)
        run.seen(run.sessions.sessions[str(payload["session"])].rank, payload.get("at"))
    elif kind == "restore":
        run.restore(str(payload["session"]), payload["snapshot"])
        run.updated_at = payload.get("at", run.updated_at)
    elif kind == "finish":
        run.finish()
        run.updated_at = payload.get("at", run.updated_at)
    elif kind == "alert":
        run.record_alert(Alert.from_dict(payload))
    return run
