"""The daemon thread that delivers queued records to the service.

Producers (``put``) only take the lock, append and maybe wake the thread: they never
wait for the network and never raise for service trouble. The thread wakes every
``flush_interval_s`` (earlier when a full batch is queued, on flush and on close), opens
the run and this rank's session if needed, and sends the queue in deliveries of up to
``max_batch_events`` records. A delivery keeps its records and its position in the
session's sequence until the service acknowledges them; only then do they leave memory.

What the service's answers mean (DESIGN §3b):

- 200 ``acked_seq``: records below it are durable; the rest of the delivery is resent.
  ``ignored`` > 0: the service acknowledged those events but does not count them (this
  session did not load the run's restored snapshot): they are lost, counted as ``ignored``.
- 409 ``sequence_gap``: the service lost acknowledged records; resend from its position.
- 409 ``session_fenced``: a newer session of this rank exists; drop everything, stop.
- 404: the service lost the run; create it again, open a session, resend from its start.
- other 4xx: the delivery is refused for good; drop it (counted as ``rejected``).
- 5xx, 408, 429, no answer: retry the same delivery after a capped, jittered backoff.

Fork-aware: a forked child gets fresh locks and no thread or connection of its own. It
does not send, because a session opened by the child would fence its parent's.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from client._coalesce import encode_delivery
from client._errors import ServiceRejected, ServiceUnavailable, SessionFenced
from client._fastpath import Record
from client._ledger import Counters, LossLog
from client._queue import EventQueue
from client._transport import Backoff, Transport
from client._wire import index_type

log = logging.getLogger(__name__)

MAX_DELIVERY_BYTES = 8 * 2**20
#: record sizes are estimated as binary; a JSON body takes up to this many times more (a class
#: index of one or two bytes becomes up to six characters, a float up to 24)
JSON_EXPANSION = 8
RUNNING, FENCED, FAILED, CRASHED = "running", "fenced", "failed", "crashed"
CLOSED, FORKED = "closed", "forked"
_STATE_DROP_REASON = {
    FENCED: "fenced",
    FAILED: "rejected",
    CRASHED: "error",
    CLOSED: "closed",
    FORKED: "forked",
}


@dataclass(frozen=True)
class WorkerConfig:
    """Tuning of the sender thread."""

    max_queue_items: int = 10_000
    max_batch_events: int = 256
    flush_interval_s: float = 0.2
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 10.0


@dataclass
class _Delivery:
    """Records on their way: the logged records of each wire event (merged, or in a block) and the events."""

    parts: list[list[Record]]
    encoded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(len(p) for p in self.parts)

    def pop_front(self, count: int) -> int:
        """Forget the first ``count`` events; returns the logged records they held."""
        gone = sum(len(p) for p in self.parts[:count])
        self.parts, self.encoded = self.parts[count:], self.encoded[count:]
        return gone


class Worker:
    """Owns the queue and the sender thread of one client.

    Args:
        transport: the connection to the service.
        run_spec: the body of ``POST /v1/runs``.
        rank: this process's rank.
        config: queue, batching and retry tuning.
    """

    def __init__(
        self, transport: Transport, run_spec: dict[str, Any], rank: int, config: WorkerConfig
    ) -> None:
        self._transport = transport
        self._run_spec = run_spec
        # indices were range-checked when logged: each task's fit its narrowest type
        self._index_types = {t["name"]: index_type(t["num_classes"]) for t in run_spec["tasks"]}
        self._run_path = f"/v1/runs/{run_spec['run_id']}"
        self._rank = rank
        self._cfg = config
        self._queue = EventQueue(config.max_queue_items)
        self._stats = Counters()
        self._losses = LossLog()
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._new_sync_state()
        self._session: str | None = None
        self._next_seq = 0
        self._inflight: _Delivery | None = None
        self._state = RUNNING
        self._failure: ServiceRejected | None = None
        self._problem = "no attempt yet"
        self._thread: threading.Thread | None = None
        self._attempted = threading.Event()  # the first attempt to open the run and session is over
        _live_workers.add(self)

    def _new_sync_state(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the sender thread (it opens the run and session in the background)."""
        name = f"linnaeus-metrics-sender-rank{self._rank}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _start_if_lazy(self) -> None:
        """An unpickled client's sender starts on first use (caller holds the lock)."""
        if self._thread is None and self._state == RUNNING:
            self.start()

    def wait_opened(self, timeout_s: float) -> bool:
        """Wait until the first attempt to open the run and session is over; True if it is."""
        return self._attempted.wait(timeout_s)

    # ------------------------------------------------------------ producer side (any thread)

    def put(self, event: Record) -> None:
        """Queue a record; O(1) unless the queue is full. Never blocks on the network."""
        with self._lock:
            if self._thread is None:
                self._start_if_lazy()
            self._stats.queued += 1
            reason = _STATE_DROP_REASON.get(self._state)
            if reason is None:
                admission = self._queue.put(event)
                if admission.coalesced or admission.dropped:
                    self._stats.coalesced += admission.coalesced
                    reason = "queue_full" if admission.dropped else None
                    self._stats.dropped["queue_full"] += admission.dropped
            else:
                self._stats.dropped[reason] += 1
            full = self._queue.live >= self._cfg.max_batch_events
        if full and not self._wake.is_set():  # while the sender catches up, do not signal it every call
            self._wake.set()
        if reason is not None:
            self._losses.drop(reason)

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is unacknowledged or ``timeout_s`` passed; True if nothing is."""
        self._wake.set()
        with self._changed:
            return self._changed.wait_for(lambda: self._pending() == 0, timeout=max(timeout_s, 0.0))

    def session(self, timeout_s: float) -> str:
        """This rank's session, waiting up to ``timeout_s`` for it to be opened.

        Raises:
            SessionFenced: a newer session of this rank exists.
            ServiceRejected: the service refused to create the run or the session.
            ServiceUnavailable: no session within ``timeout_s``.
        """
        with self._changed:
            self._start_if_lazy()
            self._changed.wait_for(
                lambda: self._session is not None or self._state != RUNNING,
                timeout=max(timeout_s, 0.0),
            )
        self.check_alive()
        with self._lock:
            if self._session is None:
                raise ServiceUnavailable(
                    f"no session within timeout_s={timeout_s}: {self._problem}"
                )
            return self._session

    def check_alive(self) -> None:
        """Raise if the thread stopped sending for good (fenced, or the run was refused)."""
        with self._lock:
            if self._state == FENCED:
                raise SessionFenced(
                    409, "session_fenced", f"a newer session of rank {self._rank} exists"
                )
            if self._failure is not None:
                raise self._failure

    def stats(self) -> dict[str, Any]:
        """Counters (see ``MetricsClient.stats``)."""
        with self._lock:
            return self._stats.to_dict(self._pending())

    def lost(self) -> int:
        """Records lost so far, for any reason (dropped, ignored, lost by the service after its ack)."""
        with self._lock:
            return sum(self._stats.dropped.values()) + self._stats.lost_after_ack

    def close(self, timeout_s: float) -> bool:
        """Flush within ``timeout_s``, stop the thread, close the connection; True if flushed."""
        flushed = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        with self._changed:
            self._drop_all_locked("closed")
            self._state = CLOSED if self._state == RUNNING else self._state
        self._transport.close()
        self._losses.summary(self.stats())
        return flushed

    def _pending(self) -> int:
        return self._queue.records + (self._inflight.records if self._inflight else 0)

    # ------------------------------------------------------------ the sender thread

    def _run(self) -> None:
        try:
            self._ensure_session()  # at once: a zombie of this rank is fenced early
            while not self._stop.is_set() and self._state == RUNNING:
                self._wake.wait(self._cfg.flush_interval_s)
                self._wake.clear()
                self._drain()
        except Exception:  # a dead sender would silently hoard records until the queue drops them
            log.exception("metrics sender thread failed; records are dropped from now on")
            with self._changed:
                self._state = CRASHED
                self._drop_all_locked("error")

    def _drain(self) -> None:
        while not self._stop.is_set() and self._state == RUNNING:
            if not self._ensure_session():
                continue
            delivery = self._next_delivery()
            if delivery is None:
                return
            self._attempt(delivery)

    def _next_delivery(self) -> _Delivery | None:
        with self._lock:
            if self._inflight is None:
                budget = MAX_DELIVERY_BYTES if self._transport.binary else MAX_DELIVERY_BYTES // JSON_EXPANSION
                parts = self._queue.take(self._cfg.max_batch_events, budget)
                self._inflight = _Delivery(parts) if parts else None
            delivery = self._inflight
        if delivery is not None and not delivery.encoded:
            groups, encoded = encode_delivery(delivery.parts, self._transport.binary, self._index_types)
            with self._lock:  # the same records, grouped as the wire events that carry them
                delivery.parts, delivery.encoded = groups, encoded
        return delivery

    def _ensure_session(self) -> bool:
        if self._session is not None:
            return True
        try:
            self._open_session()
        except ServiceUnavailable as exc:
            self._retry_later(str(exc))
            return False
        except ServiceRejected as exc:
            self._fail(exc)
            return False
        self._attempted.set()
        self._backoff.reset()
        return True

    def _open_session(self) -> None:
        self._transport.call("POST", "/v1/runs", json=self._run_spec)
        reply = self._transport.request(
            "POST", f"{self._run_path}/sessions", json={"rank": self._rank}
        )
        if reply.status_code == 404:  # the run vanished since we created it: start over
            raise ServiceUnavailable(f"run disappeared while opening a session: {reply.detail}")
        body = reply.json()
        session, next_seq = (
            body.get("session") if isinstance(body, dict) else None,
            _int_field(body, "next_seq"),
        )
        if not isinstance(session, str) or not session:
            raise ServiceUnavailable(f"malformed session reply from the service: {body!r}")
        next_seq = max(next_seq, 0)
        with self._changed:
            self._session, self._next_seq = session, next_seq
            self._changed.notify_all()
        log.debug("opened session %s of rank %d at seq %d", session, self._rank, next_seq)

    def _attempt(self, delivery: _Delivery) -> None:
        body = {"session": self._session, "seq": self._next_seq, "events": delivery.encoded}
        with self._lock:
            self._stats.sent_events += len(delivery.encoded)
        try:
            reply = self._transport.post_events(f"{self._run_path}/events", body)
        except ServiceUnavailable as exc:
            self._retry_later(str(exc))
            return
        if reply.ok:
            self._acked(delivery, _int_field(reply.payload, "acked_seq"), max(_int_field(reply.payload, "ignored"), 0))
        elif reply.error_type == "sequence_gap":
            self._resequence(delivery, _int_field(reply.payload, "expected_seq"))
        elif reply.error_type == "session_fenced":
            self._fence(reply.detail)
        elif reply.status_code == 404:
            self._lose_session(reply.detail)
        elif reply.transient:
            self._retry_later(
                f"service answered {reply.status_code} {reply.error_type}: {reply.detail}"
            )
        else:
            self._reject(delivery, f"{reply.status_code} {reply.error_type}: {reply.detail}")

    # ------------------------------------------------------------ outcomes

    def _acked(self, delivery: _Delivery, acked_seq: int, ignored: int = 0) -> None:
        count = min(acked_seq - self._next_seq, len(delivery.encoded))
        if count <= 0:
            self._retry_later(f"acknowledgement did not advance (acked_seq={acked_seq})")
            return
        with self._changed:
            if self._inflight is not delivery:  # close() gave up on it meanwhile
                return
            # the service ignores the newest events of a delivery: those it had not seen before
            lost = sum(len(p) for p in delivery.parts[max(count - ignored, 0):count])
            if lost:  # logged before flush() can see it
                self._log_ignored(lost)
            self._stats.acked_events += count
            self._stats.delivered += delivery.pop_front(count) - lost
            self._stats.dropped["ignored"] += lost
            self._next_seq = acked_seq
            if not delivery.parts:
                self._inflight = None
            self._changed.notify_all()
        self._recovered()

    def _log_ignored(self, lost: int) -> None:
        self._losses.once(
            "ignored",
            logging.ERROR,
            f"rank {self._rank}: the service ignored {lost} records: this rank's session has not loaded the "
            "run's restored snapshot (call load_state_dict() on every rank after a restore); further ones "
            "are counted in stats()['dropped']['ignored']",
        )

    def _resequence(self, delivery: _Delivery, expected_seq: int) -> None:
        if expected_seq < 0:
            self._retry_later("sequence_gap without a usable expected_seq")
            return
        if expected_seq > self._next_seq:  # it has more than we knew: an ack went missing
            self._acked(delivery, expected_seq)
            return
        with self._lock:
            self._stats.lost_after_ack += self._next_seq - expected_seq
            self._stats.retries += 1
            self._next_seq = expected_seq
        self._losses.once(
            "gap",
            logging.WARNING,
            "the service lost acknowledged records "
            f"(it expects seq {expected_seq}); counted in stats()['lost_after_ack']",
        )

    def _fence(self, detail: str) -> None:
        # logged before flush() can see the drop: a caller that got False finds the reason logged
        self._losses.once(
            "fenced",
            logging.ERROR,
            f"rank {self._rank}: this client was fenced by a newer session ({detail}); "
            "its records are dropped and counted in stats()['dropped']['fenced']",
        )
        with self._changed:
            self._state = FENCED
            self._drop_all_locked("fenced")

    def _lose_session(self, detail: str) -> None:
        with self._lock:
            self._session = None
            self._stats.retries += 1
        self._losses.once(
            "lost_run",
            logging.WARNING,
            f"the service lost the run or session ({detail}): "
            "creating it again and resending unacknowledged records",
        )

    def _reject(self, delivery: _Delivery, why: str) -> None:
        with self._changed:
            if self._inflight is not delivery:
                return
            self._losses.once(  # before flush() can see the drop (rare: logging under the lock is fine)
                "rejected",
                logging.ERROR,
                f"the service rejected {delivery.records} records ({why}); they are dropped "
                "and further rejections are counted in stats()['dropped']['rejected']",
            )
            self._stats.dropped["rejected"] += delivery.records
            self._inflight = None
            self._changed.notify_all()

    def _fail(self, exc: ServiceRejected) -> None:
        log.error("rank %d: %s; records are dropped from now on", self._rank, exc)  # before flush() sees it
        with self._changed:
            self._state, self._failure = FAILED, exc
            self._drop_all_locked("rejected")
        self._attempted.set()

    def _retry_later(self, problem: str) -> None:
        with self._lock:
            self._stats.retries += 1
            self._problem = problem
        self._attempted.set()
        self._losses.once(
            "unreachable",
            logging.WARNING,
            f"metrics service unavailable ({problem}); records stay queued and are retried",
        )
        self._stop.wait(self._backoff.next_delay())

    def _recovered(self) -> None:
        self._backoff.reset()
        if self._losses.forget("unreachable"):
            log.info("metrics service reachable again")

    def _drop_all_locked(self, reason: str) -> None:
        dropped = self._queue.clear() + (self._inflight.records if self._inflight else 0)
        self._inflight = None
        self._stats.dropped[reason] += dropped
        self._changed.notify_all()

    def _after_fork_in_child(self) -> None:
        """Start over in a forked child: fresh locks, no thread, no connection, no sending."""
        self._new_sync_state()
        self._queue.clear()
        self._inflight, self._thread, self._state = None, None, FORKED
        self._transport.abandon()


def _int_field(body: Any, name: str) -> int:
    """An integer field of a reply body, or -1 when it is missing or not an integer."""
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


_live_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for worker in list(_live_workers):
        worker._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
