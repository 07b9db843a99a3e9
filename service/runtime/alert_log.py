"""The log as an output of alerts: each fired alert is one line at its level."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.emission import Emission, Notice

log = logging.getLogger("linnaeus_metrics.alerts")
LOG_LEVELS = {"INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}


class AlertLog:
    """A listener that logs alert notices (WARN as WARNING); everything else is ignored."""

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """Nothing to prepare."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Values are not logged here (the console sink does that)."""

    def notice(self, notice: Notice) -> None:
        """Log an alert."""
        if notice.kind == "alert":
            detail = notice.detail
            log.log(LOG_LEVELS.get(str(detail.get("level")), logging.WARNING), "run %s: alert %s: %s",
                    notice.run_id, detail.get("name"), detail.get("message"))

    def delete_run(self, run_id: str) -> None:
        """Nothing to forget."""
