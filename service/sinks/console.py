"""Console sink: one compact log line per console window, closed epoch and finished run.

Lines go through ``logging.getLogger("linnaeus_metrics.console")`` at INFO, e.g.::

    run exp42 step 1200/10000 loss 1.2345 chain 45.67% partial 50.12% 812.3 samples/s eta 2:03:04
    run exp42 epoch closed at step 1250: val loss 0.9876 chain 56.78% partial 60.01%
    run exp42 finished: final_val_loss 0.9123 final_val_chain_accuracy 58.20% (+12 more)

Keys missing from an emission are left out of its line. Logging is cheap enough to do in
``emit`` (the handler decides where it goes); nothing here ever raises into ingest.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.emission import Emission, Notice

LOGGER_NAME = "linnaeus_metrics.console"
_HEADLINE = ("loss", "chain_accuracy", "partial_chain_accuracy")
_FINAL_HEADLINE = tuple(f"final_{phase}_{name}" for phase in ("train", "val") for name in _HEADLINE)


class ConsoleSink:
    """Logs training progress as one line per console emission."""

    name = "console"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER_NAME)
        self._lock = threading.Lock()
        self._total_steps: dict[str, int] = {}

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        total = spec.get("total_steps")
        with self._lock:
            self._total_steps[run_id] = total if isinstance(total, int) else 0

    def emit(self, emissions: Sequence[Emission]) -> None:
        for emission in emissions:
            try:
                if emission.group == "console":
                    self._log.info("%s", self._progress_line(emission))
                elif emission.group == "epoch":
                    self._log.info("%s", epoch_line(emission))
            except Exception:  # a log line is never worth failing ingest for
                self._log.debug("console sink: cannot format %r", emission, exc_info=True)

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        try:
            self._log.info("%s", finish_line(run_id, summary))
        except Exception:
            self._log.debug("console sink: cannot format the summary of %s", run_id, exc_info=True)
        return "finished"

    def notice(self, notice: Notice) -> None:
        """Status changes are logged by the runtime itself."""

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._total_steps.pop(run_id, None)

    def status(self, run_id: str) -> dict[str, Any]:
        return {"state": "logging"}

    def close(self, timeout_s: float) -> None:
        """Nothing to release: lines are written as they come."""

    def _progress_line(self, emission: Emission) -> str:
        with self._lock:
            total = self._total_steps.get(emission.run_id, 0)
        return progress_line(emission, total)


def progress_line(emission: Emission, total_steps: int) -> str:
    """The line of a console emission: the global train values and rates."""
    values = global_values(emission, "train")
    step = f"step {emission.step}/{total_steps}" if total_steps else f"step {emission.step}"
    parts = [f"run {emission.run_id}", step, *_headline(values)]
    if _number(values.get("samples_per_sec")):
        parts.append(f"{values['samples_per_sec']:.1f} samples/s")
    if _number(values.get("eta_sec")):
        parts.append(f"eta {_duration(values['eta_sec'])}")
    return " ".join(parts)


def global_values(emission: Emission, phase: str) -> dict[str, Any]:
    """``{statistic: value}`` of the emission's global (not per-task, not subset) values of ``phase``."""
    return {m.statistic: emission.values[key] for key, m in emission.metrics.items()
            if key in emission.values and m.phase == phase and m.task is None and m.family is None}


def epoch_line(emission: Emission) -> str:
    """The line of a closed epoch: headline values of every phase in the emission."""
    phases = sorted({m.phase for m in emission.metrics.values() if m.phase is not None})
    shown = []
    for phase in phases:
        headline = _headline(global_values(emission, phase))
        if headline:
            shown.append(" ".join([phase, *headline]))
    body = " | ".join(shown) or f"{len(emission.values)} values"
    return f"run {emission.run_id} epoch closed at step {emission.step}: {body}"


def finish_line(run_id: str, summary: Mapping[str, float]) -> str:
    """The line of a finished run: the headline ``final_*`` values."""
    shown = [key for key in _FINAL_HEADLINE if _number(summary.get(key))]
    parts = [f"{key} {_format(key, summary[key])}" for key in shown]
    rest = len(summary) - len(shown)
    if rest:
        parts.append(f"(+{rest} more)")
    return f"run {run_id} finished: " + (" ".join(parts) or "no final values")


def _headline(values: Mapping[str, Any]) -> list[str]:
    labels = {"loss": "loss", "chain_accuracy": "chain", "partial_chain_accuracy": "partial"}
    return [f"{labels[name]} {_format(name, values[name])}" for name in _HEADLINE if _number(values.get(name))]


def _format(name: str, value: float) -> str:
    return f"{value:.2f}%" if "accuracy" in name else f"{value:.4f}"


def _number(value: Any) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """``H:MM:SS`` (days folded into hours); ``?`` when unknown (infinite)."""
    if not math.isfinite(float(seconds)):
        return "?"
    total = max(0, round(float(seconds)))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
