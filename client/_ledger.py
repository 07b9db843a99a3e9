"""What happened to the records: delivery counters and deduplicated log lines about losses.

Every loss is counted per reason; each reason is logged once (the first time), and
``close()`` logs a summary of all of them, so a service outage costs a few log lines, not
one per record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "rejected", "fenced", "ignored", "closed", "forked", "error")
_DROP_HINTS = {
    "queue_full": "the queue is full (max_queue_items) and nothing more could be merged",
    "rejected": "the service refused the run or its records",
    "fenced": "a newer session of this rank fenced this client; it sends nothing more",
    "ignored": "the service ignored them: this rank did not load the run's restored snapshot",
    "closed": "they were not acknowledged before close()",
    "forked": "this is a forked child process; only the parent sends",
    "error": "the sender thread failed",
}
_DROP_KEYS = {reason: f"drop:{reason}" for reason in DROP_REASONS}  # LossLog keys, not built a call


@dataclass
class Counters:
    """Delivery counters (records are what ``log_*()`` queued; events what went on the wire)."""

    queued: int = 0
    sent_events: int = 0
    acked_events: int = 0
    delivered: int = 0
    retries: int = 0
    coalesced: int = 0
    lost_after_ack: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def to_dict(self, pending: int) -> dict[str, Any]:
        """A copy as plain dicts, with the number of records still ``pending``."""
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if k != "dropped"}
        out["dropped"] = dict(self.dropped)
        out["pending"] = pending
        return out


class LossLog:
    """Log lines about trouble, each kind once until ``forget``."""

    def __init__(self) -> None:
        self._logged: set[str] = set()

    def once(self, key: str, level: int, message: str) -> None:
        """Log ``message`` unless ``key`` was logged already."""
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message)

    def forget(self, key: str) -> bool:
        """Allow ``key`` to be logged again; True if it had been logged."""
        known = key in self._logged
        self._logged.discard(key)
        return known

    def drop(self, reason: str) -> None:
        """The first drop of a reason: say why and where the rest is counted."""
        key = _DROP_KEYS[reason]  # one of DROP_REASONS: the worker counts it in stats()['dropped'] first
        if key in self._logged:  # every later drop (each log_batch while the queue is full): no message to build
            return
        self.once(
            key,
            logging.WARNING,
            f"dropping metrics records: {_DROP_HINTS.get(reason, reason)}; further drops are "
            f"counted in stats()['dropped'][{reason!r}] and summarised at close",
        )

    def summary(self, stats: dict[str, Any]) -> None:
        """At close: every loss, by reason."""
        lost = {k: v for k, v in stats["dropped"].items() if v}
        if lost or stats["lost_after_ack"]:
            log.warning(
                "metrics client closed; records lost: %s, lost by the service after "
                "acknowledgement: %d",
                lost,
                stats["lost_after_ack"],
            )
