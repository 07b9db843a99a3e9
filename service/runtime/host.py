"""RunHost: every live run of this service process, its store and its sinks.

Each command goes check (core, changes nothing) -> append (store: durable) -> apply
(core, cannot fail) -> emissions and notices out. The store append happens under the run
lock on purpose: the journal's order must be the order of application, or a replay would
compute another state. Deliveries that arrive together go as a group (``ingest_many``):
each is checked and applied in turn, their journal rows are made durable by ONE commit,
and only then do replies and emissions go out; if that commit fails, the run is rebuilt
from the store, so nothing the store does not hold is acknowledged or shown (readers wait
on the run lock). Sinks are called after the run lock is released (``Outbox``), in
the order the run produced their input. Reads copy under the lock and format outside it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from client._wire import Event, encode_event
from service.core.emission import Emission, Notice, Sink
from service.core.errors import LimitExceeded, RunConflict, RunQuarantined, ServiceError, UnknownRun
from service.core.experiment import config_warnings
from service.core.run_commands import Run
from service.core.run_state import RunState
from service.core.spec import RunSpec, check_run_id, parse_spec
from service.runtime import views
from service.runtime.dispatch import Listener, Outbox
from service.storage.base import Store, StoredRun

log = logging.getLogger("linnaeus_metrics.runtime")
#: One delivery for ``RunHost.ingest_many``: session, seq, events, and the body as received (or None).
Delivery = tuple[str, int, Sequence[Event], tuple[bytes, str] | None]


@runtime_checkable
class ResumingSink(Protocol):
    """A sink whose output must survive a crash of the service (the wandb sink): what it has not
    written yet is kept in each recovery image, and recovery hands it back with the emissions
    replayed after that image; it drops whatever it had already written."""

    name: str

    def backlog(self, run_id: str) -> dict[str, Any] | None:
        """What the sink has not written yet, msgpack-safe (None: nothing)."""

    def restore_backlog(self, run_id: str, backlog: Mapping[str, Any]) -> None:
        """Take a ``backlog`` back after a restart."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Queue emissions (as ``Sink.emit``)."""


class RunHost:
    """All runs of one service process.

    Args:
        sinks: outputs of every run's emissions and notices.
        store: the durable store (None: memory only, for tests and ``durable=False``).
        max_runs: runs this process holds at most.
        history_max_points: points kept per history series.
        image_every_events: events between recovery images of a run.
        new_id: session id factory.
        listeners: get every emission and notice like sinks but are not the run's sinks
            (the live stream, the alert log): nothing to finish, no per-run status.
        missing_rank_grace_s: how long after a run's first session ranks that never opened one
            are logged (once per run, at the next delivery).
        clock: wall-clock time (created/updated/last-seen times, stall alerts, the grace above).
    """

    def __init__(self, sinks: Sequence[Sink] = (), store: Store | None = None, max_runs: int = 1000,
                 history_max_points: int = 10_000, image_every_events: int = 5_000,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex, listeners: Sequence[Listener] = (),
                 missing_rank_grace_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.sinks = list(sinks)
        self.listeners = list(listeners)
        self._outputs: list[Listener] = [*self.sinks, *self.listeners]
        self._clock = clock
        self.started_at = clock()
        self.store = store
        self.max_runs = max_runs
        self.history_max_points = history_max_points
        self.image_every_events = image_every_events
        self._new_id = new_id
        self._runs: dict[str, Run] = {}
        self._outboxes: dict[str, Outbox] = {}
        self._last_command: dict[str, int] = {}
        self._quarantined: dict[str, str] = {}
        self.missing_rank_grace_s = missing_rank_grace_s
        self._first_session_at: dict[str, float] = {}  # runs whose missing ranks are not yet logged
        self.image_writes = 0
        self.image_seconds = 0.0
        self.journal_commits = 0  # of event deliveries: one per group (ingest_many) or delivery (ingest)
        self.committed_deliveries = 0
        self._figures = threading.Lock()  # the figures above: runs write them from several threads
        self._lock = threading.Lock()

    # ------------------------------------------------------------ runs

    def create_run(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a run, or return the existing one with the same spec.

        Raises:
            InvalidInput: the spec is invalid.
            RunConflict: a run with the same id has a different spec.
            LimitExceeded: the service holds ``max_runs`` runs.
        """
        spec = parse_spec(raw)
        with self._lock:
            self._refuse_quarantined(spec.run_id)
            existing = self._runs.get(spec.run_id)
            if existing is not None:
                if existing.spec.to_dict() != spec.to_dict():
                    raise RunConflict(f"run_id: run {spec.run_id!r} exists with a different spec")
                return self.info(spec.run_id), False
            if len(self._runs) >= self.max_runs:
                raise LimitExceeded(f"runs: the service already holds {self.max_runs} runs (max_runs)")
            now = self._clock()
            self._append(spec.run_id, "create", {"spec": spec.to_dict(), "created_at": now})
            run = self.add(spec)
            run.created_at = run.updated_at = now
        log.info("run %s created (%d ranks, %d tasks)", spec.run_id, spec.world_size, len(spec.tasks))
        for warning in config_warnings(raw.get("config")):  # the stored spec no longer has what they name
            log.warning("run %s: %s", spec.run_id, warning)
        self._publish(run, [Notice(spec.run_id, "created", -1, {"world_size": spec.world_size})])
        return self.info(spec.run_id), True

    def add(self, spec: RunSpec, open_sinks: bool = True) -> Run:
        """Hold a new run (already durable, or being replayed)."""
        state = RunState(spec)
        state.book.max_points = self.history_max_points
        return self.hold(Run(spec, state), open_sinks)

    def hold(self, run: Run, open_sinks: bool = True) -> Run:
        """Hold ``run`` (created, or rebuilt by recovery)."""
        self._runs[run.spec.run_id] = run
        self._outboxes[run.spec.run_id] = Outbox()
        if open_sinks:
            self.open_sinks(run)
        return run

    def open_sinks(self, run: Run) -> None:
        """Tell every sink and listener about ``run``."""
        for output in self._outputs:
            output.open_run(run.spec.run_id, run.spec.to_dict())

    def quarantine(self, run_id: str, reason: str) -> None:
        """Refuse ``run_id`` from now on (recovery could not rebuild it); its stored data stays.

        Takes no host lock (see ``forget``): a failed group commit whose run cannot be reloaded
        calls it with the run's lock held. The refusal comes first.
        """
        self._quarantined[run_id] = reason
        self.forget(run_id)
        log.error("run %s quarantined: %s; its stored data is kept as it is, the run is refused until "
                  "it is repaired or deleted", run_id, reason)

    def quarantined(self) -> dict[str, str]:
        """Quarantined runs and why."""
        with self._lock:
            return dict(self._quarantined)

    def _refuse_quarantined(self, run_id: str) -> None:
        reason = self._quarantined.get(run_id)
        if reason is not None:
            raise RunQuarantined(f"run: {run_id!r} is quarantined ({reason}); its data is kept, it takes no "
                                 "commands until it is repaired and the service restarted, or it is deleted")

    def get(self, run_id: str) -> Run:
        """The run ``run_id``; raises UnknownRun (InvalidInput for a malformed id), RunQuarantined."""
        check_run_id(run_id)
        self._refuse_quarantined(run_id)
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"run: no run {run_id!r}")
        return run

    def holds(self, run_id: str) -> bool:
        """Whether this process holds ``run_id`` and may write it now (a dict lookup: no I/O)."""
        return run_id in self._runs

    def forget(self, run_id: str) -> None:
        """Drop a run from memory only (another replica took it over); its data stays in the store.

        Takes no host lock, like ``quarantine``: its callers hold the run's lock, and ``delete_run``
        takes the host lock before a run's. Each step is one dict operation.
        """
        self._runs.pop(run_id, None)
        self._outboxes.pop(run_id, None)
        self._last_command.pop(run_id, None)

    def run_ids(self) -> list[str]:
        """Ids of every run, sorted."""
        with self._lock:
            return sorted(self._runs)

    def runs(self) -> list[Run]:
        """Every run, sorted by id."""
        return [run for run_id in self.run_ids() if (run := self._runs.get(run_id)) is not None]

    def delete_run(self, run_id: str) -> None:
        """Remove a run and its data (a quarantined run's too: the operator gives it up)."""
        with self._lock:
            if run_id in self._quarantined:
                if self.store is not None:
                    self.store.delete_run(run_id)
                del self._quarantined[run_id]
                log.warning("quarantined run %s deleted with its stored data", run_id)
                return
            run = self.get(run_id)
            with run.lock:
                if self.store is not None:
                    self.store.delete_run(run_id)
                self._runs.pop(run_id, None)  # a quarantine may have dropped it while this waited
                self._outboxes.pop(run_id, None)
                self._first_session_at.pop(run_id, None)
        for output in self._outputs:
            output.delete_run(run_id)

    # ------------------------------------------------------------ commands

    def open_session(self, run_id: str, rank: int) -> dict[str, Any]:
        """Open a session for ``rank``, fencing older ones; returns ``{session, rank, next_seq}``."""
        run = self.get(run_id)
        session_id = self._new_id()
        with run.lock:
            run.check_session(rank)
            now = self._clock()
            self._append(run_id, "session", {"rank": rank, "session": session_id, "at": now}, run)
            fenced = run.open_session(rank, session_id)
            run.seen(rank, now)
            notices = [Notice(run_id, "session", run.state.watermark, {"rank": rank, "session": session_id})]
            notices += [Notice(run_id, "fenced", run.state.watermark, {"rank": rank, "session": s}) for s in fenced]
            self._collect(run, notices)
        if fenced:
            log.info("run %s: rank %d opened a session, fencing %d older one(s)", run_id, rank, len(fenced))
        self._first_session_at.setdefault(run_id, self._clock())
        self._dispatch(run)
        return {"session": session_id, "rank": rank, "next_seq": 0}

    def ingest(self, run_id: str, session_id: str, seq: int, events: Sequence[Event],
               body: tuple[bytes, str] | None = None) -> dict[str, int]:
        """Apply a delivery exactly once; returns ``{"acked_seq", "applied", "ignored"}``.

        ``body`` is the request as received (bytes, content type): the journal keeps it as
        it is rather than encoding the decoded events again. A group of one (``ingest_many``):
        one path for a delivery, alone or grouped.
        """
        reply = self.ingest_many(run_id, [(session_id, seq, events, body)])[0]
        if isinstance(reply, ServiceError):
            raise reply
        return reply

    def ingest_many(self, run_id: str, deliveries: Sequence[Delivery]) -> list[dict[str, int] | ServiceError]:
        """Apply deliveries of one run exactly once, one after another, with ONE journal
        transaction for all of them (group commit: a sync to disk for the group, not for each).

        Each delivery is checked against the state the ones before it left, and applied at once;
        their journal rows are then written together, and no reply leaves before that commit.
        A delivery its check refuses gets its own error and changes nothing. If the commit fails,
        the run goes back to what the store holds (``_roll_back``) and the store's error is raised:
        it is every delivery's answer (each reply was computed on state that is gone).

        Returns:
            per delivery, its reply ``{acked_seq, applied, ignored}`` or the error that refused it.
        """
        run = self.get(run_id)
        results: list[dict[str, int] | ServiceError] = []
        with run.lock:
            self._writable(run_id, run)
            journal: list[dict[str, Any]] = []
            try:
                for session_id, seq, events, body in deliveries:
                    try:
                        plan = run.plan_delivery(session_id, seq, events)
                    except ServiceError as exc:
                        results.append(exc)
                        continue
                    if plan.fresh:
                        now = self._clock()
                        journal.append({**_journal_events(session_id, seq, events, body), "at": now})
                    results.append(run.apply_delivery(plan))
                    if plan.fresh:  # a resent duplicate changes nothing, its time included
                        run.seen(plan.session.rank, now)
                if journal and self.store is not None:
                    self._last_command[run_id] = self.store.append_many(run_id, "events", journal)
                    self._committed(len(journal))
            except BaseException:  # the store's error (or a bug): nothing of the group stays
                self._roll_back(run)
                raise
            self._collect(run)
            self._log_missing_ranks(run)
        self._dispatch(run)
        return results

    def _writable(self, run_id: str, run: Run) -> None:
        """Raise unless ``run`` is still the run held under ``run_id`` (caller holds its lock): a write
        through a copy that was quarantined or deleted while it waited for the lock is refused."""
        if self._runs.get(run_id) is not run:
            self._refuse_quarantined(run_id)
            raise UnknownRun(f"run: no run {run_id!r}")

    def _roll_back(self, run: Run) -> None:
        """Take ``run`` back to what the store holds, after a group applied in memory could not be
        journaled (caller holds the run lock). The store's image and journal are replayed into a
        scratch host and ``run`` takes that state (readers waiting on its lock then see it). If the
        store cannot give the run back either, the run is quarantined: refused, loudly, until a
        restart recovers it from the store."""
        run_id = run.spec.run_id
        if self.store is None:
            return  # nothing is journaled: memory is all there is
        try:
            scratch = RunHost(store=self.store, history_max_points=self.history_max_points,
                              image_every_events=self.image_every_events)
            if scratch.recover([self.store.load_run(run_id)]) == 1 and run_id in scratch._runs:
                run.adopt(scratch._runs[run_id])
                if run_id in scratch._last_command:
                    self._last_command[run_id] = scratch._last_command[run_id]
                log.warning("run %s: a journal write failed; the run was taken back to what the store holds",
                            run_id)
                return
            reason = scratch.quarantined().get(run_id, "the store does not hold it")
        except Exception as exc:  # the store could not be read: refuse the run rather than serve unjournaled state
            reason = f"{type(exc).__name__}: {exc}"
        self.quarantine(run_id, f"a journal write failed and the store could not give the run back ({reason})"[:500])

    def _log_missing_ranks(self, run: Run) -> None:
        """Once per run, after the grace period: ranks that never joined (caller holds the lock)."""
        since = self._first_session_at.get(run.spec.run_id)
        if since is None or self._clock() - since < self.missing_rank_grace_s:
            return
        del self._first_session_at[run.spec.run_id]
        missing = views.missing_ranks(run)
        if missing:
            log.warning("run %s: %s", run.spec.run_id, views.missing_note(run, missing))

    def restore(self, run_id: str, session_id: str, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Roll the run back to a snapshot's cut (DESIGN §3b)."""
        run = self.get(run_id)
        with run.lock:
            state = run.check_restore(session_id, snapshot)
            previous = run.generation
            now = self._clock()
            self._append(run_id, "restore", {"session": session_id, "snapshot": dict(snapshot), "at": now}, run)
            reply = run.restore(session_id, snapshot, state)
            run.updated_at = now
            notices = []
            if run.generation != previous:
                if self.store is not None and run.base is not None:
                    self.store.put_blob(run_id, "base", str(run.generation), run.base)
                notices.append(Notice(run_id, "restore", run.state.watermark,
                                      {"snapshot_id": reply["snapshot_id"], "cut": reply["cut"]}))
            self._collect(run, notices)
        if notices:
            log.info("run %s restored to snapshot %s (watermark %d)", run_id, reply["snapshot_id"],
                     reply["cut"]["watermark"])
        self._dispatch(run)
        return reply

    def finish(self, run_id: str) -> dict[str, float]:
        """Close windows and epochs, write the final summary; returns it."""
        run = self.get(run_id)
        with run.lock:
            finishing = not run.state.finished
            if finishing:
                run.updated_at = self._clock()
                self._append(run_id, "finish", {"at": run.updated_at}, run)
            summary = run.finish()
            self._collect(run, [Notice(run_id, "finished", run.state.watermark, {})] if finishing else [])
        self._dispatch(run)
        return summary

    def finish_sinks(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> dict[str, str]:
        """Finish the run in every sink (bounded); returns how each ended."""
        return {sink.name: sink.finish_run(run_id, summary, timeout_s) for sink in self.sinks}

    # ------------------------------------------------------------ durability

    def _append(self, run_id: str, kind: str, payload: Mapping[str, Any], run: Run | None = None) -> None:
        """Journal a command of ``run`` (None: the run is being created); caller holds the run's lock."""
        if run is not None:
            self._writable(run_id, run)
        if self.store is not None:
            self._last_command[run_id] = self.store.append(run_id, kind, payload)

    def note_replayed(self, run_id: str, command_id: int) -> None:
        """Recovery replayed the run's journal through ``command_id``."""
        self._last_command[run_id] = command_id

    def _collect(self, run: Run, notices: Iterable[Notice] = ()) -> None:
        """Queue emissions and notices for the sinks, persist new checkpoints, write an image
        when due (caller holds the run lock)."""
        items: list[Any] = list(notices)
        items[:0] = run.state.drain()
        for checkpoint_id in run.new_checkpoints:
            if self.store is not None:
                self.store.put_blob(run.spec.run_id, "checkpoint", checkpoint_id, run.checkpoints[checkpoint_id])
            items.append(Notice(run.spec.run_id, "checkpoint", run.state.watermark, {"id": checkpoint_id}))
        run.new_checkpoints.clear()
        items += [Notice(run.spec.run_id, "alert", alert.step, alert.to_dict()) for alert in run.new_alerts]
        run.new_alerts.clear()
        self._outboxes[run.spec.run_id].put(items)
        if run.events_since_image >= self.image_every_events:
            self.write_image(run)

    def _publish(self, run: Run, notices: Sequence[Notice]) -> None:
        outbox = self._outboxes.get(run.spec.run_id)
        if outbox is not None:
            outbox.put(notices)
        self._dispatch(run)

    def _dispatch(self, run: Run) -> None:
        outbox = self._outboxes.get(run.spec.run_id)
        if outbox is not None:
            outbox.dispatch(self._outputs)

    def check_stalls(self, threshold_s: float, now: float | None = None) -> int:
        """Fire the built-in stall alert of every active run's ranks silent for longer than
        ``threshold_s``: since their last delivery (or the run's creation), and at most since
        this service started, as trainers keep their records while the service is down.
        Journaled, so it survives restarts. Returns the count."""
        now = self._clock() if now is None else now
        fired = 0
        for run in self.runs():
            with run.lock:
                seen = {rank: max(run.last_seen.get(rank, run.created_at or 0.0), self.started_at)
                        for rank in range(run.spec.world_size)}
                stalls = [] if run.state.finished else run.alerts.stalls(now, seen, run.state.watermark, threshold_s)
                for alert in stalls:
                    self._append(run.spec.run_id, "alert", alert.to_dict())
                    run.record_alert(alert)
                self._collect(run)
            self._dispatch(run)
            fired += len(stalls)
        return fired

    def write_image(self, run: Run) -> None:
        """Compact: one image replaces the run's journal so far (caller holds the lock).

        The image also keeps what sinks have not written yet (``sink_backlogs``): the journal
        before it is gone, so a crash could not replay their emissions any more.
        """
        if self.store is None or run.spec.run_id not in self._last_command:
            return
        started = time.perf_counter()
        image = run.image()
        image["sink_backlogs"] = self._sink_backlogs(run)
        self.store.write_image(run.spec.run_id, self._last_command[run.spec.run_id], image)
        run.events_since_image = 0
        with self._figures:
            self.image_writes += 1
            self.image_seconds += time.perf_counter() - started

    def _committed(self, deliveries: int) -> None:
        with self._figures:
            self.journal_commits += 1
            self.committed_deliveries += deliveries

    def _sink_backlogs(self, run: Run) -> dict[str, Any]:
        keeping = [sink for sink in self.sinks if isinstance(sink, ResumingSink)]
        if not keeping:
            return {}
        outbox = self._outboxes.get(run.spec.run_id)
        if outbox is not None:
            # emissions still on their way must be in the sinks' backlogs; emit() never blocks,
            # so handing them over here, under the run lock, is brief
            outbox.settle(self._outputs)
        backlogs = {sink.name: sink.backlog(run.spec.run_id) for sink in keeping}
        return {name: backlog for name, backlog in backlogs.items() if backlog}

    def write_images(self) -> None:
        """An image of every run (at shutdown: the next start is quick)."""
        for run in self.runs():
            with run.lock:
                self.write_image(run)

    def recover(self, stored_runs: Iterable[StoredRun]) -> int:
        """Rebuild runs from the store; returns the count (see ``service.runtime.recovery``)."""
        from service.runtime.recovery import recover

        return recover(self, stored_runs)

    # ------------------------------------------------------------ snapshots

    def checkpoint(self, run_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The checkpoint's snapshot; CheckpointPending names the missing ranks."""
        run = self.get(run_id)
        with run.lock:
            found = run.checkpoints.get(checkpoint_id)
            if found is None and self.store is not None:
                found = self.store.get_blob(run_id, "checkpoint", checkpoint_id)
            if found is None:
                found = run.checkpoint(checkpoint_id)
        return found

    def cut_checkpoint(self, run_id: str, checkpoint_id: str) -> dict[str, Any] | None:
        """The checkpoint if this process holds the run, has cut it and the run's lock is free at
        once (callable on the event loop: it never waits); None: ask ``checkpoint``."""
        run = self._runs.get(run_id)
        if run is None or not run.lock.acquire(blocking=False):
            return None
        try:
            return run.checkpoints.get(checkpoint_id)
        finally:
            run.lock.release()

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """A snapshot cut at every rank's current position."""
        run = self.get(run_id)
        with run.lock:
            return run.snapshot()

    # ------------------------------------------------------------ reads

    def list_runs(self) -> list[dict[str, Any]]:
        """Short info of every run, quarantined ones included (status ``quarantined``, with the reason)."""
        out = []
        names = [sink.name for sink in self.sinks]
        for run in self.runs():
            with run.lock:
                out.append({**views.short_info(run), "sinks": names})
        out += [{"run_id": run_id, "status": "quarantined", "reason": reason}
                for run_id, reason in sorted(self.quarantined().items())]
        return out

    def export_figures(self, max_runs: int) -> list[dict[str, Any]]:
        """Figures of the ``max_runs`` most recently updated active runs (for Prometheus)."""
        active = []
        for run in self.runs():
            with run.lock:
                if not run.state.finished:
                    active.append((run.updated_at or run.created_at or 0.0, run))
        active.sort(key=lambda item: (-item[0], item[1].spec.run_id))
        out = []
        for _, run in active[:max_runs]:
            with run.lock:
                out.append(views.export_figures(run))
        return out

    def info(self, run_id: str) -> dict[str, Any]:
        """A run's spec, status, per-rank watermarks, counters and sink status."""
        run = self.get(run_id)
        with run.lock:
            info = views.full_info(run)
        info["sinks"] = {s.name: s.status(run_id) for s in self.sinks}
        return info

    def metrics(self, run_id: str) -> dict[str, Any]:
        """Latest value of every key."""
        run = self.get(run_id)
        with run.lock:
            return views.latest(run)

    def history(self, run_id: str, keys: Sequence[str] | None, since_step: int | None,
                max_points: int | None) -> dict[str, Any]:
        """Series of the requested keys (all when ``keys`` is None)."""
        run = self.get(run_id)
        with run.lock:
            copied = views.copy_history(run, keys)
        return {"run_id": run_id, "series": {k: {**views.series(s, v, since_step, max_points), "metric": m}
                                             for k, (s, v, m) in copied.items()}}

    def summary(self, run_id: str) -> dict[str, Any]:
        """Best values so far (final ones once finished)."""
        run = self.get(run_id)
        with run.lock:
            return {"run_id": run_id, "finished": run.state.finished, "summary": run.state.book.best_values()}

    def telemetry_figures(self) -> dict[str, Any]:
        """Totals for the service's own metrics (read at scrape time)."""
        runs: dict[str, int] = {"active": 0, "finished": 0}
        counters: dict[str, int] = {}
        held = 0
        sinks: dict[tuple[str, str], float] = {}
        for run in self.runs():
            with run.lock:
                runs["finished" if run.state.finished else "active"] += 1
                for key, value in run.counters.items():
                    counters[key] = counters.get(key, 0) + value
                held += len(run.state.cuts.held)
            for sink in self.sinks:
                for figure, value in sink.status(run.spec.run_id).items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        sinks[(sink.name, figure)] = sinks.get((sink.name, figure), 0) + value
        return {"runs": runs, "counters": counters, "held": held, "sinks": sinks,
                "images": {"writes": self.image_writes, "seconds": self.image_seconds},
                "groups": {"commits": self.journal_commits, "deliveries": self.committed_deliveries}}


def _journal_events(session_id: str, seq: int, events: Sequence[Event],
                    body: tuple[bytes, str] | None) -> dict[str, Any]:
    if body is not None:
        return {"session": session_id, "seq": seq, "body": body[0], "content_type": body[1]}
    return {"session": session_id, "seq": seq, "events": [encode_event(e, binary=True) for e in events]}
