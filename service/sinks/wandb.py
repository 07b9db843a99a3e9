"""Weights & Biases sink: one worker thread feeds one wandb run per service run.

Producer side (``emit``, called with the run lock released): emissions are folded into
the run's pending rows under the sink lock, a dict merge that never waits on wandb, and
the worker is woken. Worker side: the only thread that imports or touches wandb. It takes
sealed rows under the lock and calls wandb outside it; every wandb call that raises is
retried with exponential backoff, counted and logged once per run and error type.

Rows: wandb keeps one history row per step and drops steps lower than the last one it
got, so the sink sends exactly one ``run.log(row, step=s)`` per step with strictly
increasing steps. The row of the highest step stays open until a higher step arrives (or
a flush/finish), lower pending rows are sealed and sent in step order. An emission for a
step already handed to wandb (typically after a trainer restore) cannot be sent: it is
skipped, counted in ``skipped_rows`` and reported once per run in the log.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.core.emission import Emission, Notice
from service.core.errors import ConfigError
from service.core.experiment import WandbOptions, resolve_wandb_options, without_secrets
from service.sinks.wandb_rows import Rows

_log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
#: Rows sent per run before the worker looks at the other runs.
_ROWS_PER_TURN = 256
#: Alerts waiting per run for the worker; beyond that they are dropped and counted.
_MAX_PENDING_ALERTS = 256
#: wandb silences repeats of one alert title within this many seconds (its default is a minute).
_ALERT_REPEAT_S = 1
#: Wake-up bound while a retry is scheduled (an injected clock may not follow real time).
_MAX_IDLE_WAIT_S = 1.0
_DISABLED = WandbOptions(
    enabled=False,
    project="",
    entity=None,
    name="",
    group=None,
    tags=(),
    notes=None,
    run_id="",
    resume=None,
)
_WANDB_SETTINGS: dict[str, Any] = {
    "console": "off",
    "silent": True,
    "quiet": True,
    "x_disable_stats": True,
    "x_disable_meta": True,
    "x_disable_machine_info": True,
    "disable_git": True,
    "disable_code": True,
    "save_code": False,
    "x_save_requirements": False,
    "disable_job_creation": True,
}


@dataclass
class _Run:
    """A service run's wandb state. Fields marked worker-only are never read elsewhere."""

    run_id: str
    spec: Mapping[str, Any]
    options: WandbOptions
    rows: Rows
    disabled: bool
    wandb_run: Any = None  # worker-only
    defined: set[str] = field(default_factory=set)  # worker-only
    retry_row: tuple[int, dict[str, Any]] | None = None
    initialized: bool = False
    done: bool = False
    deleted: bool = False
    outcome: str | None = None
    finish_event: threading.Event | None = None
    flush_events: list[threading.Event] = field(default_factory=list)
    rows_logged: int = 0
    last_step: int | None = None
    failures: int = 0
    last_error: str | None = None
    errors_seen: set[tuple[str, str]] = field(default_factory=set)
    retry_delay_s: float = 0.0
    next_attempt: float = float("-inf")
    skip_warned: bool = False
    wandb_run_id: str | None = None
    dir: str | None = None
    config_error: str | None = None
    alerts: list[tuple[str, str, str]] = field(default_factory=list)
    alerts_sent: int = 0
    alerts_dropped: int = 0

    def pending_rows(self) -> int:
        return len(self.rows.rows) + (self.retry_row is not None)

    def flushing(self) -> bool:
        return self.finish_event is not None or bool(self.flush_events)


class WandbSink:
    """Forwards emissions to Weights & Biases without ever blocking ingest.

    Args:
        base_dir: where wandb writes (it adds ``wandb/``) unless ``WANDB_DIR`` is set.
        mode: ``online``, ``offline`` or ``disabled``. Default: ``offline`` when
            ``WANDB_MODE`` says offline/disabled, else ``online`` only when
            ``WANDB_API_KEY`` is set, else ``offline`` (wandb never prompts for a login).
        retry_initial_s: first backoff after a failed wandb call.
        retry_max_s: backoff ceiling.
        max_pending_rows: rows kept per run while wandb is slow or failing; beyond that
            the oldest are dropped and counted.
        init_fn: ``wandb.init`` (tests inject failures here).
        clock: monotonic clock for backoff deadlines.
    """

    name = "wandb"

    def __init__(
        self,
        base_dir: Path,
        *,
        mode: str | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_pending_rows: int = 100_000,
        init_fn: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"WandbSink: mode must be one of {MODES}, got {mode!r}")
        if max_pending_rows < 1:
            raise ValueError(f"WandbSink: max_pending_rows must be >= 1, got {max_pending_rows}")
        self.mode = mode or _default_mode()
        self.dir = Path(os.environ.get("WANDB_DIR") or base_dir)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._max_pending_rows = max_pending_rows
        self._init_fn = init_fn
        self._clock = clock
        self._cond = threading.Condition()
        self._runs: dict[str, _Run] = {}
        self._retired: list[_Run] = []
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- Sink protocol ---------------------------------------------------------------

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """Start (in the worker) the wandb run of ``run_id``; a no-op if already open.

        An invalid ``EXPERIMENT`` section is logged and leaves the run without wandb output
        (state ``config_error``); the API validates it with ``resolve_wandb_options`` first.
        """
        config_error: str | None = None
        try:
            options = resolve_wandb_options(spec.get("config"), run_id)
        except ConfigError as exc:
            options, config_error = _DISABLED, str(exc)
        with self._cond:
            current = self._runs.get(run_id)
            if current is not None and not current.done:
                return
            run = _Run(
                run_id=run_id,
                spec=spec,
                options=options,
                rows=Rows(self._max_pending_rows),
                disabled=not options.enabled or self.mode == "disabled",
                retry_delay_s=self._retry_initial_s,
                config_error=config_error,
            )
            if current is not None:  # reopened after finish: keep wandb's step monotonic
                run.rows.sent_step = current.rows.sent_step
            self._runs[run_id] = run
            if not run.disabled and not self._closed:
                self._ensure_worker()
                self._cond.notify()
        if config_error is not None:
            _log.error("wandb run %s: not logged to wandb: %s", run_id, config_error)
        for warning in options.warnings:
            _log.warning("wandb run %s: %s", run_id, warning)

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Fold emissions into pending rows; never blocks on wandb, never raises."""
        try:
            with self._cond:
                for emission in emissions:
                    run = self._runs.get(emission.run_id)
                    if run is not None and not run.disabled and not run.done:
                        run.rows.add(emission)
                self._cond.notify()
        except Exception:  # a sink must not fail ingest; the traceback says what broke
            _log.exception("wandb sink: could not queue %d emissions", len(emissions))

    def alert(self, run_id: str, title: str, text: str, level: str) -> None:
        """Queue ``run.alert(title, text, level)`` for the worker; never blocks on wandb, never raises."""
        with self._cond:
            run = self._runs.get(run_id)
            if run is None or run.disabled or run.done:
                return
            if len(run.alerts) >= _MAX_PENDING_ALERTS:
                run.alerts_dropped += 1
                return
            run.alerts.append((title[:63], text, level))  # wandb wants titles under 64 characters
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Send every pending row of every run; False if ``timeout_s`` passed first.

        Open rows are sent too, so an emission arriving later for such a step is skipped
        (``finish_run`` flushes by itself; this is for shutdown paths and tests).
        """
        events: list[threading.Event] = []
        with self._cond:
            for run in self._runs.values():
                if not run.disabled and not run.done and self._thread is not None:
                    events.append(threading.Event())
                    run.flush_events.append(events[-1])
            self._cond.notify()
        return _wait_all(events, timeout_s)

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        """Flush, write ``summary`` into the run summary and finish the wandb run.

        Returns:
            ``finished``, ``disabled``, ``timeout`` (the worker goes on in the background)
            or ``failed: <reason>`` (the last wandb call failed and is being retried).
        """
        with self._cond:
            run = self._runs.get(run_id)
            if run is None:
                return f"failed: run {run_id!r} was not opened on the wandb sink"
            if run.disabled:
                return f"failed: {run.config_error}" if run.config_error else "disabled"
            if run.done:
                return run.outcome or "finished"
            if self._closed:
                return "failed: the wandb sink is closed"
            run.rows.summary.update(summary)
            if run.finish_event is None:
                run.finish_event = threading.Event()
            event = run.finish_event
            self._cond.notify()
        finished = event.wait(max(0.0, timeout_s))
        with self._cond:
            if finished:
                return run.outcome or "finished"
            return f"failed: {run.last_error}" if run.last_error else "timeout"

    def notice(self, notice: Notice) -> None:
        """Alerts become ``run.alert``; other status changes do not reach wandb."""
        if notice.kind == "alert":
            detail = notice.detail
            self.alert(notice.run_id, str(detail.get("name")), str(detail.get("message")), str(detail.get("level")))

    def delete_run(self, run_id: str) -> None:
        """Forget the run; its wandb run is finished in the background, files are kept."""
        with self._cond:
            run = self._runs.pop(run_id, None)
            if run is not None and not run.disabled and not run.done:
                run.deleted = True
                run.finish_event = run.finish_event or threading.Event()
                self._retired.append(run)
                self._cond.notify()

    def status(self, run_id: str) -> dict[str, Any]:
        """Counters and state of the run's wandb output."""
        with self._cond:
            run = self._runs.get(run_id)
            if run is None:
                return _status("unknown", self.mode, None, str(self.dir))
            return _status(
                _state(run),
                "disabled" if run.disabled else self.mode,
                run,
                run.dir or str(self.dir),
            )

    def close(self, timeout_s: float) -> None:
        """Finish every open run within ``timeout_s`` and stop the worker."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            events = [run.finish_event for run in self._retired if run.finish_event]
            for run in self._runs.values():
                if not run.disabled and not run.done:
                    run.finish_event = run.finish_event or threading.Event()
                    events.append(run.finish_event)
            self._cond.notify()
        if self._thread is not None and not _wait_all(events, deadline - time.monotonic()):
            _log.warning("wandb sink: closing with unfinished runs %s", self._open_run_ids())
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    # -- worker ----------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        """Start the worker (again after a fork: threads do not survive it)."""
        alive = self._thread is not None and self._thread.is_alive()
        if alive and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._work, name="linnaeus-wandb", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                due = self._wait_for_work()
            if due is None:
                return
            for run in due:
                try:
                    self._serve(run)
                except Exception as exc:  # a bug must neither kill the worker nor spin it
                    _log.exception("wandb sink: unexpected error serving run %s", run.run_id)
                    self._record_failure(run, "serve", exc)

    def _wait_for_work(self) -> list[_Run] | None:
        """Under the lock: the runs with work due now, or None to stop."""
        while not self._stopping:
            now = self._clock()
            runs = [*self._retired, *self._runs.values()]
            due = [run for run in runs if self._has_work(run) and run.next_attempt <= now]
            if due:
                return due
            waits = [run.next_attempt - now for run in runs if self._has_work(run)]
            self._cond.wait(min(_MAX_IDLE_WAIT_S, *waits) if waits else None)
        return None

    @staticmethod
    def _has_work(run: _Run) -> bool:
        if run.deleted:
            return True
        if run.disabled or run.done:
            return False
        return (
            not run.initialized
            or run.retry_row is not None
            or run.rows.sendable(everything=run.flushing())
            or bool(run.rows.summary)
            or bool(run.alerts)
            or run.flushing()
            or (run.rows.skip_note is not None and not run.skip_warned)
        )

    def _serve(self, run: _Run) -> None:
        """One turn of work for one run; stops at the first failed wandb call."""
        if run.deleted:
            self._retire(run)
        elif run.wandb_run is None:
            self._call(run, "init", lambda: self._start(run))
        elif self._send_rows(run) and self._write_summary(run) and self._send_alerts(run):
            self._complete_flushes(run)

    def _start(self, run: _Run) -> None:
        init = self._init_fn or _wandb_init
        opts = run.options
        self.dir.mkdir(parents=True, exist_ok=True)
        wandb_run = init(
            project=opts.project,
            entity=opts.entity,
            name=opts.name,
            group=opts.group,
            tags=list(opts.tags) or None,
            notes=opts.notes,
            id=opts.run_id,
            resume=opts.resume,
            mode=self.mode,
            dir=str(self.dir),
            reinit="create_new",
            config=_run_config(run.spec),
            settings=dict(_WANDB_SETTINGS),
        )
        run.wandb_run = wandb_run
        resumed_at = int(getattr(wandb_run, "starting_step", 0) or 0)
        with self._cond:
            run.initialized = True
            run.wandb_run_id = str(getattr(wandb_run, "id", opts.run_id))
            run.dir = str(getattr(wandb_run, "sync_dir", "") or self.dir)
            if getattr(wandb_run, "resumed", False) and resumed_at > 0:
                run.rows.sent_step = max(run.rows.sent_step, resumed_at - 1)

    def _send_rows(self, run: _Run) -> bool:
        """Send up to one turn of sealed rows; False if a call failed or rows remain."""
        self._warn_skips(run)
        for _ in range(_ROWS_PER_TURN):
            with self._cond:
                item = run.retry_row or run.rows.take(everything=run.flushing())
                run.retry_row = None
            if item is None:
                return True
            step, row = item
            if not self._call(run, "log", functools.partial(self._log_row, run, step, row)):
                with self._cond:
                    run.retry_row = item
                return False
            with self._cond:
                run.rows_logged += 1
                run.last_step = step
        return False

    def _log_row(self, run: _Run, step: int, row: dict[str, Any]) -> None:
        for key in row:
            if key not in run.defined:
                with self._cond:
                    kind = run.rows.directions.get(key)
                if kind is not None:
                    run.wandb_run.define_metric(key, summary=kind)
                run.defined.add(key)
        run.wandb_run.log(row, step=step)

    def _write_summary(self, run: _Run) -> bool:
        with self._cond:
            values, run.rows.summary = run.rows.summary, {}
        if values and not self._call(run, "summary", lambda: run.wandb_run.summary.update(values)):
            with self._cond:
                run.rows.summary = {**values, **run.rows.summary}
            return False
        return True

    def _send_alerts(self, run: _Run) -> bool:
        with self._cond:
            pending, run.alerts = run.alerts, []
        for index, (title, text, level) in enumerate(pending):
            send = functools.partial(run.wandb_run.alert, title=title, text=text, level=level,
                                     wait_duration=_ALERT_REPEAT_S)
            if not self._call(run, "alert", send):
                with self._cond:
                    run.alerts = pending[index:] + run.alerts
                return False
            with self._cond:
                run.alerts_sent += 1
        return True

    def _complete_flushes(self, run: _Run) -> None:
        with self._cond:
            if run.pending_rows() or run.rows.summary or run.alerts:
                return
            flushed, run.flush_events = run.flush_events, []
            finishing = run.finish_event is not None
        for event in flushed:
            event.set()
        if finishing and self._call(run, "finish", run.wandb_run.finish):
            with self._cond:
                run.done, run.outcome = True, "finished"
                assert run.finish_event is not None
                run.finish_event.set()

    def _retire(self, run: _Run) -> None:
        """Finish a deleted run's wandb run once, best effort."""
        with self._cond:
            self._retired.remove(run)
        if run.wandb_run is not None:
            try:
                run.wandb_run.finish()
            except Exception as exc:
                _log.warning("wandb run %s: finishing a deleted run failed: %r", run.run_id, exc)
        with self._cond:
            run.done = True
            for event in [*run.flush_events, *([run.finish_event] if run.finish_event else [])]:
                event.set()

    def _call(self, run: _Run, what: str, fn: Callable[[], object]) -> bool:
        """Run one wandb call; on failure count it, log it once per type and back off."""
        try:
            fn()
        except Exception as exc:
            self._record_failure(run, what, exc)
            return False
        with self._cond:
            run.last_error = None
            run.retry_delay_s = self._retry_initial_s
        return True

    def _record_failure(self, run: _Run, what: str, exc: Exception) -> None:
        kind = (what, type(exc).__name__)
        with self._cond:
            run.failures += 1
            run.last_error = f"wandb {what} raised {type(exc).__name__}: {exc}"
            run.next_attempt = self._clock() + run.retry_delay_s
            run.retry_delay_s = min(self._retry_max_s, run.retry_delay_s * 2 or 0.001)
            first = kind not in run.errors_seen
            run.errors_seen.add(kind)
        if first:
            _log.warning(
                "wandb run %s: %s; retrying with backoff up to %.0f s (logged once per error type)",
                run.run_id,
                run.last_error,
                self._retry_max_s,
            )

    def _warn_skips(self, run: _Run) -> None:
        with self._cond:
            note = run.rows.skip_note if not run.skip_warned else None
            run.skip_warned = run.skip_warned or note is not None
        if note is not None:
            first, sent = note
            _log.warning(
                "wandb run %s: rows for steps <= %d were already sent, so rows from step %d "
                "(after a restore to an earlier step) are skipped until step %d; wandb cannot "
                "take rows back (counted in skipped_rows)",
                run.run_id,
                sent,
                first,
                sent + 1,
            )

    def _open_run_ids(self) -> list[str]:
        with self._cond:
            return [r.run_id for r in self._runs.values() if not (r.disabled or r.done)]


def _wandb_init(**kwargs: Any) -> Any:
    import wandb  # imported by the worker only: it is slow to import and never needed else

    return wandb.init(**kwargs)


def _default_mode() -> str:
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "disabled":
        return "disabled"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _run_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The run spec as wandb config, with the API key stripped from the training config."""
    config = {key: value for key, value in spec.items() if key != "config"}
    config["config"] = without_secrets(spec.get("config"))
    return config


def _state(run: _Run) -> str:
    if run.config_error is not None:
        return "config_error"
    if run.disabled:
        return "disabled"
    if run.done:
        return "finished"
    if run.last_error is not None:
        return "retrying"
    if run.finish_event is not None:
        return "finishing"
    return "running" if run.initialized else "starting"


def _status(state: str, mode: str, run: _Run | None, directory: str) -> dict[str, Any]:
    return {
        "state": state,
        "mode": mode,
        "rows_logged": run.rows_logged if run else 0,
        "last_step": run.last_step if run else None,
        "failures": run.failures if run else 0,
        "skipped_rows": run.rows.skipped if run else 0,
        "dropped_rows": run.rows.dropped if run else 0,
        "pending_rows": run.pending_rows() if run else 0,
        "alerts_sent": run.alerts_sent if run else 0,
        "alerts_dropped": run.alerts_dropped if run else 0,
        "wandb_run_id": run.wandb_run_id if run else None,
        "dir": directory,
        "last_error": (run.config_error or run.last_error) if run else None,
    }


def _wait_all(events: Sequence[threading.Event], timeout_s: float) -> bool:
    """Wait for every event under one deadline."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    return all(event.wait(max(0.0, deadline - time.monotonic())) for event in events)
