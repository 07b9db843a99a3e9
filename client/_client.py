"""``MetricsClient``: what a training process uses to report its metrics.

``log_*()`` check their arguments, update this rank's step bookkeeping (DESIGN §3b) and
queue one record; a daemon thread (``client._worker``) delivers the queue. The step
bookkeeping lives here, under one lock, and records are queued under that same lock, so
the order of records in the stream always agrees with the checks made on them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, SupportsFloat, SupportsIndex

import httpx

from client._checkpoint import (
    await_snapshot,
    check_state_dict,
    post_restore,
    rank_position,
    state_envelope,
)
from client._errors import (
    CheckpointTimeout,
    ClientClosed,
    InvalidType,
    ServiceRejected,
    ServiceUnavailable,
)
from client._fastpath import FastBatches, Record
from client._progress import RankProgress
from client._records import build_batch, build_scalar, check_int, check_name
from client._roster import Roster
from client._rules import MAX_STEP
from client._spec import ClientArgs, check_client_args
from client._transport import Backoff, Transport, call_until
from client._wire import TRAIN_PHASE, CheckpointEvent, CompleteEvent, EndEpochEvent
from client._worker import Worker

log = logging.getLogger(__name__)

EXIT_FLUSH_S = 2.0


class MetricsClient:
    """Reports one rank's training metrics to a linnaeus-metrics service.

    The constructor creates the run (same spec → same run) and opens this rank's session
    before it returns, and raises if the service refuses them (another spec under this
    run id, a limit, auth, a wrong URL). When the service cannot be reached within
    ``open_timeout_s`` it returns anyway: records are buffered and a daemon thread keeps
    trying. ``log_*()`` never block on the network and never raise because of the
    service; records wait in a bounded queue until the service acknowledged them.

    Copies: ``copy.deepcopy`` returns the client itself (EMA/SWA copies of a model share
    it); a pickled client unpickled in another process is a new client of the same run
    and rank that opens its own session when it first logs (its token comes from
    ``LINNAEUS_METRICS_TOKEN``: a token is never pickled).

    Args:
        url: the service root, e.g. ``"http://metrics:8000"`` (or a router in front of replicas),
            or a list of replica roots (also as one string separated by commas): writes go to
            the run's owner, found by following the replicas' 307 answers.
        run_id: the run (letters, digits, ``.``, ``_``, ``-``; the rule is ``client._rules.check_run_id``).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of ranks reporting to the run.
        tasks: ``{name: num_classes}`` (null class 0) or a list of
            ``{"name", "num_classes", "null_index"}`` in the model's task order.
        total_steps: planned optimizer steps (for ETA and schedule fractions).
        config: the training config's ``METRICS`` and ``EXPERIMENT`` sections.
        subsets: declared subset families, ``{family: [labels]}``.
        token: bearer token; defaults to ``LINNAEUS_METRICS_TOKEN``.
        binary: send msgpack (True) or JSON (False) bodies.
        max_queue_items: queue capacity; past it records are merged, then dropped.
        max_batch_events: records per delivery.
        flush_interval_s: how long a record may wait to be batched with others; by default
            0.2 s, longer for large runs so that all ranks together post about 256 requests a
            second (``world_size / 256`` s, at most 5 s: 4 s at 1,024 ranks; see ``flush_interval_s``).
        request_timeout_s: timeout of one HTTP request.
        retry_initial_s: first retry delay (doubling, jittered, capped by ``retry_max_s``).
        retry_max_s: longest retry delay.
        open_timeout_s: how long the constructor waits for the run and session (0: not at all).
        missing_ranks_grace_s: age after which ``flush()``/``close()`` warn about ranks of
            the run that never opened a session.
        transport: an ``httpx.BaseTransport`` instead of the network (tests).
        clock: wall-clock time source for record times.

    Raises:
        ValueError: an argument has a bad value (message names it; a ``ClientError``).
        TypeError: an argument has the wrong type (message names it; a ``ClientError``).
        ServiceRejected: the service refused the run or the session (e.g. 409
            ``run_conflict``: this run id exists with another spec).

    Example:
        Without ``config`` the service's default schedule applies (step windows every
        100 steps, wandb every 100, LR every 200):

        >>> with MetricsClient("http://metrics:8000", "exp42", rank=0, world_size=1,
        ...                    tasks={"species": 1000}, total_steps=1000) as mc:  # doctest: +SKIP
        ...     for step in range(1, 1001):
        ...         mc.log_batch(step, epoch=0, loss=0.7, targets={"species": y},
        ...                      logits={"species": out})
        ...     assert mc.flush()  # False if any record was lost
        ...     mc.finish()  # on one rank, once every rank is done
    """

    def __init__(
        self,
        url: str | list[str],
        run_id: str,
        rank: int,
        world_size: int,
        tasks: Mapping[str, int] | list[dict[str, Any]],
        total_steps: int,
        config: Mapping[str, Any] | None = None,
        subsets: Mapping[str, list[str]] | None = None,
        token: str | None = None,
        *,
        binary: bool = True,
        max_queue_items: int = 10_000,
        max_batch_events: int = 256,
        flush_interval_s: float | None = None,
        request_timeout_s: float = 10.0,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 10.0,
        open_timeout_s: float = 10.0,
        missing_ranks_grace_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is not None and not isinstance(token, str):
            raise InvalidType(f"token: expected a str, got {type(token).__name__}")
        options = {
            "binary": binary, "max_queue_items": max_queue_items, "max_batch_events": max_batch_events,
            "flush_interval_s": flush_interval_s, "request_timeout_s": request_timeout_s,
            "retry_initial_s": retry_initial_s, "retry_max_s": retry_max_s, "open_timeout_s": open_timeout_s,
            "missing_ranks_grace_s": missing_ranks_grace_s,
        }
        args = check_client_args(url, run_id, rank, world_size, tasks, total_steps, config, subsets, options)
        self._build(args, token, transport, clock)
        self._open(args.open_timeout_s)

    def _build(
        self, args: ClientArgs, token: str | None, transport: httpx.BaseTransport | None, clock: Callable[[], float]
    ) -> None:
        self._args = args
        self.run_id, self.rank, self.world_size = args.run_id, args.rank, args.world_size
        self.tasks, self.total_steps = list(args.tasks), args.total_steps
        self._transport = Transport(
            args.url, token=token, binary=args.binary, timeout_s=args.request_timeout_s, transport=transport
        )
        self._retry = (args.worker.backoff_initial_s, args.worker.backoff_max_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._progress = RankProgress()
        self._fast = FastBatches(self.tasks)
        self._phases: set[str] = set()
        self._closed = False
        self._started_at = time.monotonic()
        self._roster = Roster(self._transport, args.run_id, args.world_size, args.missing_ranks_grace_s)
        self._losses_reported = 0
        self._worker = Worker(self._transport, args.body, self.rank, args.worker)
        self._pid = os.getpid()
        _open_clients.add(self)

    def _open(self, timeout_s: float) -> None:
        """Create/open the run and this rank's session; raise if the service refuses them.

        An unreachable service is not an error: the sender thread keeps trying.
        """
        self._worker.start()
        self._worker.wait_opened(timeout_s)
        try:
            self._worker.check_alive()
        except ServiceRejected:
            self.close(timeout_s=0)
            raise

    # ------------------------------------------------------------ copies

    def __copy__(self) -> MetricsClient:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> MetricsClient:
        # a client is a handle on this rank's session: a copy that opened its own would fence it
        return self

    def __reduce__(self) -> tuple[Callable[..., MetricsClient], tuple[Any, ...]]:
        return _unpickle, (self._pid, id(self), self._args)

    # ------------------------------------------------------------ properties

    @property
    def flush_interval_s(self) -> float:
        """How long a record may wait on this rank before the sender posts it (the constructor's
        argument, or the default for the run's world size)."""
        return self._args.worker.flush_interval_s

    @property
    def last_step(self) -> int:
        """The largest train step this rank logged (a batch or a scalar), -1 before any."""
        return self._progress.steps.last_step

    @property
    def completed_step(self) -> int:
        """The train step this rank has completed through (DESIGN §3b), -1 before any."""
        return self._progress.steps.completed

    # ------------------------------------------------------------ logging

    def log_batch(
        self,
        step: SupportsIndex,
        *,
        epoch: SupportsIndex,
        phase: str = TRAIN_PHASE,
        loss: SupportsFloat | None = None,
        task_losses: Mapping[str, SupportsFloat] | None = None,
        targets: Mapping[str, Any],
        topk: Mapping[str, Any] | None = None,
        logits: Mapping[str, Any] | None = None,
        subsets: Mapping[str, Any] | None = None,
        sample_losses: Any = None,
    ) -> None:
        """Queue one batch of ``phase`` at global optimizer step ``step``.

        Arrays may be numpy arrays, lists or torch tensors. With ``logits``, the top-3
        classes per sample are computed here (on the tensor's device for torch; only the
        indices cross to the host); for numpy input ties go to the lowest class index, for
        torch input their order is ``torch.topk``'s.

        Args:
            step: the global optimizer step.
            epoch: the epoch of ``phase`` this batch belongs to.
            phase: ``"train"``, ``"val"``, ``"val_mask"`` or a custom phase name.
            loss: the batch's mean loss.
            task_losses: ``{task: mean loss}``.
            targets: ``{task: int[B]}`` for every task.
            topk: ``{task: int[B, k]}`` with 3 <= k <= 100, column 0 the argmax.
            logits: ``{task: float[B, num_classes]}``; exactly one of topk and logits.
            subsets: ``{family: labels[B]}`` (str labels).
            sample_losses: per-sample losses, float[B].

        Raises:
            InvalidRecord: a bad value (unknown task, shape, class index out of range, NaN
                loss, negative step, an ended epoch); a ValueError.
            StepAlreadyCompleted: a train batch for a step this rank already completed.
            InvalidType: a wrong type (non-int step, float class indices); a TypeError.
            ClientClosed: the client was closed.
        """
        # plain ints and an already-seen phase skip the general checks (the common case)
        if not (type(step) is int and type(epoch) is int and 0 <= step <= MAX_STEP and 0 <= epoch <= MAX_STEP):
            step, epoch = check_int(step, "step"), check_int(epoch, "epoch")
        if type(phase) is not str or phase not in self._phases:
            self._phases.add(check_name(phase, "phase"))
        now = float(self._clock())
        event: Record | None = None
        if logits is None and sample_losses is None:
            event = self._fast.build(step, epoch, phase, now, loss, task_losses, targets, topk, subsets)
        if event is None:
            event = self._thorough(step, epoch, phase, now, loss, task_losses, targets, topk, logits, subsets,
                                   sample_losses)
        with self._lock:
            if self._closed:
                self._check_open()
            self._progress.check_batch(phase, epoch, step)
            self._worker.put(event)

    def _thorough(self, step: int, epoch: int, phase: str, now: float, loss: Any, task_losses: Any, targets: Any,
                  topk: Any, logits: Any, subsets: Any, sample_losses: Any) -> Record:
        """Every check, naming the bad argument (logits, sample losses, or whatever the fast path declined)."""
        event = build_batch(
            self.tasks,
            step=step,
            epoch=epoch,
            phase=phase,
            time=now,
            loss=loss,
            task_losses=task_losses,
            targets=targets,
            topk=topk,
            logits=logits,
            subsets=subsets,
            sample_losses=sample_losses,
        )
        for family, (labels, _) in event.subsets.items():
            self._fast.admit(family, labels)  # the same per-run label limits as the fast path
        return event

    def log_lr(self, step: SupportsIndex, values: Mapping[str, float]) -> None:
        """Queue learning rates ``{param_group: lr}`` at ``step`` (raises like ``log_custom``)."""
        self._log_scalar("lr", step, values)

    def log_pipeline(self, step: SupportsIndex, values: Mapping[str, float]) -> None:
        """Queue data-pipeline stats ``{name: value}`` at ``step`` (raises like ``log_custom``)."""
        self._log_scalar("pipeline", step, values)

    def log_gradnorm(self, step: SupportsIndex, values: Mapping[str, float]) -> None:
        """Queue GradNorm state ``{name: value}`` at ``step`` (raises like ``log_custom``)."""
        self._log_scalar("gradnorm", step, values)

    def log_custom(
        self,
        step: SupportsIndex,
        values: Mapping[str, float],
        higher_is_better: Mapping[str, bool] | None = None,
    ) -> None:
        """Queue user metrics ``{name: value}`` at train step ``step``.

        Args:
            step: the global optimizer step (a scalar completes every earlier step).
            values: finite numbers by name (names may contain ``/``).
            higher_is_better: per name, whether to track the max (True) or min (False) as
                best and final value.

        Raises:
            InvalidRecord: a bad name or value, or a direction that contradicts an earlier one.
            StepAlreadyCompleted: ``step`` was already completed by this rank.
            InvalidType: a wrong type.
            ClientClosed: the client was closed.
        """
        self._log_scalar("custom", step, values, higher_is_better)

    def _log_scalar(
        self,
        kind: str,
        step: SupportsIndex,
        values: Mapping[str, float],
        higher_is_better: Mapping[str, bool] | None = None,
    ) -> None:
        step = check_int(step, "step")
        event = build_scalar(kind, step, values, float(self._clock()), higher_is_better)
        with self._lock:
            self._check_open()
            self._progress.check_scalar(step, event.higher_is_better)
            self._worker.put(event)

    def end_epoch(self, phase: str, epoch: SupportsIndex) -> None:
        """Queue the end of ``epoch`` of ``phase`` on this rank.

        Ending a train epoch also completes every train step logged so far.

        Raises:
            InvalidRecord / InvalidType: a bad phase or epoch.
            ClientClosed: the client was closed.
        """
        phase, epoch = check_name(phase, "phase"), check_int(epoch, "epoch")
        event = EndEpochEvent(phase, epoch, float(self._clock()))
        with self._lock:
            self._check_open()
            self._progress.end_epoch(phase, epoch)
            self._worker.put(event)

    def _complete_locked(self) -> None:
        through_step = self._progress.complete()
        if through_step is not None:
            self._worker.put(CompleteEvent(through_step))

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(
                f"client of run {self.run_id!r} rank {self.rank}: used after close()"
            )

    # ------------------------------------------------------------ delivery

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Complete the last logged train step and wait until the service acknowledged everything.

        Args:
            timeout_s: the deadline; the call returns by then.

        Returns:
            True only if every record logged so far is durable on the service. False on the
            deadline, and False for good once any record was lost for any reason (see
            ``stats()["dropped"]`` and ``stats()["lost_after_ack"]``).
        """
        with self._lock:
            if not self._closed:
                self._complete_locked()
        flushed = self._worker.flush(timeout_s)
        if not flushed:
            log.warning(
                "flush: %d records still unacknowledged after timeout_s=%s",
                self._worker.stats()["pending"],
                timeout_s,
            )
        self._roster.check(time.monotonic() - self._started_at)
        return flushed and not self._report_losses()

    def _report_losses(self) -> bool:
        """True if records were lost; logs each new total once."""
        lost = self._worker.lost()
        if lost > self._losses_reported:
            self._losses_reported = lost
            stats = self._worker.stats()
            reasons = {k: v for k, v in stats["dropped"].items() if v}
            log.warning("flush: %d records of rank %d were lost (dropped %s, lost by the service after its ack: "
                        "%d); flush() returns False", lost, self.rank, reasons, stats["lost_after_ack"])
        return lost > 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush within ``timeout_s``, stop the sender thread, close the connection.

        Records still unacknowledged then are dropped (``stats()["dropped"]["closed"]``);
        losses are logged. Idempotent. Clients still open at interpreter exit are closed
        with a 2 s deadline.
        """
        with self._lock:
            if self._closed:
                return
            self._complete_locked()
            self._closed = True
        _open_clients.discard(self)
        self._roster.check(time.monotonic() - self._started_at)  # while the connection is open
        self._worker.close(timeout_s)

    def finish(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Finish the run: close its windows, write ``final_*`` values, finish its wandb run.

        Call it on one rank (e.g. rank 0) once every rank has logged its last record and
        flushed or closed: a finished run refuses further records. Flushes this rank first.

        Args:
            timeout_s: deadline for the whole call (the service waits, bounded, for wandb).

        Returns:
            The service's reply: ``{"run_id", "summary": {"final_...": value}, "sinks"}``.

        Raises:
            ServiceUnavailable: no answer within ``timeout_s``.
            ServiceRejected: the service refused (e.g. the run is unknown).
        """
        deadline = time.monotonic() + timeout_s
        self.flush(timeout_s)
        path = f"/v1/runs/{self.run_id}/finish"

        def attempt() -> Any:
            remaining = max(deadline - time.monotonic(), 0.1)
            return self._transport.request("POST", path, timeout_s=remaining).json()

        reply = call_until(deadline, self._backoff(), attempt)
        return reply if isinstance(reply, dict) else {"reply": reply}

    def stats(self) -> dict[str, Any]:
        """Delivery counters.

        Returns:
            ``queued`` (records logged), ``coalesced`` (records merged into another),
            ``sent_events`` (wire events transmitted, resends included; merged records
            and a block of records are one event each), ``acked_events``
            (wire events acknowledged), ``delivered`` (logged records acknowledged),
            ``retries``, ``pending`` (records not yet acknowledged), ``lost_after_ack``
            (events the service acknowledged and later lost) and ``dropped``
            ``{reason: records}`` for reasons ``queue_full``, ``rejected``, ``fenced``,
            ``ignored`` (the service did not count them: this rank had not loaded the
            restored snapshot), ``closed``, ``forked`` and ``error``; ``missing_ranks``: the
            ranks that had never opened a session when last checked (see ``flush``).
        """
        stats = self._worker.stats()
        stats["missing_ranks"] = self._roster.missing
        return stats

    # ------------------------------------------------------------ checkpoints

    def state_dict(
        self, timeout_s: float = 60.0, checkpoint_id: str | None = None
    ) -> dict[str, Any]:
        """Take a consistent cut across all ranks (DESIGN §3b); call it on every rank.

        Flushes (completing the last logged step), puts a checkpoint marker in this rank's
        stream, and waits until every rank's marker is in and the service took the
        snapshot at the markers.

        Args:
            timeout_s: deadline for the whole call.
            checkpoint_id: matches markers across ranks; default the last logged train step.

        Returns:
            ``{"format", "version", "run_id", "rank", "snapshot"}``, plain builtins only.

        Raises:
            CheckpointTimeout: a rank's marker (maybe this one's) did not arrive in time.
            SessionFenced / ServiceRejected: this client can no longer write to the run.
            ClientClosed: the client was closed.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._check_open()
            self._complete_locked()
            ckpt = str(self._progress.steps.last_step)
            if checkpoint_id is not None:
                ckpt = check_name(checkpoint_id, "checkpoint_id")
            self._worker.put(CheckpointEvent(ckpt))
        if not self._worker.flush(deadline - time.monotonic()):
            raise CheckpointTimeout(
                f"checkpoint {ckpt!r}: this rank's marker was not acknowledged "
                f"within timeout_s={timeout_s}",
                ckpt,
                [self.rank],
            )
        self._worker.check_alive()
        snapshot = await_snapshot(self._transport, self.run_id, ckpt, deadline, self._backoff())
        return state_envelope(self.run_id, self.rank, snapshot)

    def load_state_dict(self, state_dict: Mapping[str, Any], timeout_s: float = 60.0) -> None:
        """Roll the run back to a checkpoint's cut (DESIGN §3b); call it on every rank.

        Blocks until the service confirmed the restore: first every pending record is
        delivered, then the snapshot is posted with this rank's session, then this rank's
        step bookkeeping is reset to its position at the cut.

        Args:
            state_dict: what ``state_dict()`` returned (on any rank) for this run.
            timeout_s: deadline for the whole call.

        Raises:
            InvalidType: ``state_dict`` is not a dict.
            InvalidStateDict: another format, version or run.
            ServiceUnavailable: the service could not be reached within ``timeout_s``.
            ServiceRejected: the service refused the snapshot.
            ClientClosed: the client was closed.
        """
        snapshot = check_state_dict(state_dict, self.run_id)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._check_open()
        if not self._worker.flush(timeout_s):
            pending = self._worker.stats()["pending"]
            raise ServiceUnavailable(
                f"load_state_dict: {pending} records unacknowledged after timeout_s={timeout_s}"
            )
        session = self._worker.session(deadline - time.monotonic())
        post_restore(self._transport, self.run_id, session, snapshot, deadline, self._backoff())
        position = rank_position(snapshot, self.rank)
        with self._lock:
            self._progress.reset(position)

    def _backoff(self) -> Backoff:
        return Backoff(*self._retry)

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MetricsClient(url={self._transport.base_url!r}, run_id={self.run_id!r}, "
            f"rank={self.rank}, world_size={self.world_size})"
        )


_open_clients: weakref.WeakSet[MetricsClient] = weakref.WeakSet()


def _unpickle(pid: int, object_id: int, args: ClientArgs) -> MetricsClient:
    """The client a pickle stands for: the original while it lives in this process, else a new one.

    The new one opens its own session when it first logs (in another process: its rank's
    new writer). The token comes from ``LINNAEUS_METRICS_TOKEN`` there: it is never pickled.
    """
    if pid == os.getpid():
        for client in list(_open_clients):
            if id(client) == object_id and client._args == args and not client._closed:
                return client
    client = MetricsClient.__new__(MetricsClient)
    client._build(args, None, None, time.time)
    return client


def _new_locks_in_child() -> None:
    # A thread of the parent may have held a client's lock at the fork: it never returns here.
    for client in list(_open_clients):
        client._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


@atexit.register
def _close_at_exit() -> None:
    for client in list(_open_clients):
        client.close(timeout_s=EXIT_FLUSH_S)
