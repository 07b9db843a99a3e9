"""The logging schedule of the training config's METRICS section (DESIGN §4).

>>> s = resolve_schedule({"METRICS": {"STEP_INTERVAL": 10, "WANDB_FRACTION": 0.25}}, total_steps=100)
>>> s.intervals["step"], s.intervals["wandb"], s.intervals["lr"]
(10, 25, 0)
>>> s.fires("wandb", 50), s.fires("wandb", 60), s.fires("lr", 10)
(True, False, False)
>>> s.next_firing("step", 11), s.next_firing("step", 20), s.next_firing("lr", 3)
(20, 20, None)

Without a METRICS section the seed's example schedule applies, and says so:

>>> d = resolve_schedule(None, total_steps=1000)
>>> d.intervals["step"], d.intervals["wandb"], d.source
(100, 100, 'default')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.core.errors import ConfigError

GROUPS = ("step", "console", "wandb", "lr", "pipeline")
#: The seed's example schedule (DESIGN §4), used when a config has no METRICS section.
DEFAULT_INTERVALS = {"step": 100, "console": 200, "wandb": 100, "lr": 200, "pipeline": 500}
KNOWN_KEYS = frozenset(f"{g.upper()}_{suffix}" for g in GROUPS for suffix in ("INTERVAL", "FRACTION")) | {"ALERTS"}


@dataclass(frozen=True)
class Schedule:
    """Resolved intervals in steps per group; 0 means the group is disabled.

    ``source`` is ``"config"`` when they come from a METRICS section, ``"default"`` when
    the config had none and the seed's example schedule applies.
    """

    intervals: Mapping[str, int]
    source: str = "config"

    def fires(self, group: str, step: int) -> bool:
        """True when ``group`` logs at ``step``."""
        interval = self.intervals[group]
        return interval > 0 and step % interval == 0

    def next_firing(self, group: str, step: int) -> int | None:
        """The first step at or after ``step`` at which ``group`` fires (None: disabled)."""
        interval = self.intervals[group]
        if interval <= 0:
            return None
        return -(-step // interval) * interval


def metrics_section(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The METRICS section, from ``METRICS`` or ``SCHEDULE.METRICS`` (not both)."""
    config = config or {}
    top = config.get("METRICS")
    schedule = config.get("SCHEDULE")
    nested = schedule.get("METRICS") if isinstance(schedule, Mapping) else None
    if top is not None and nested is not None:
        raise ConfigError("config: both METRICS and SCHEDULE.METRICS are given; keep one")
    section = top if top is not None else nested
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"METRICS: expected a mapping, got {type(section).__name__}")
    return section


def resolve_schedule(config: Mapping[str, Any] | None, total_steps: int) -> Schedule:
    """Resolve every group's interval (the seed's defaults when there is no METRICS section).

    Raises:
        ConfigError: unknown keys, both INTERVAL and FRACTION non-zero, a negative
            interval or a fraction outside (0, 1].
    """
    section = metrics_section(config)
    if not section and not _has_section(config):
        return Schedule(dict(DEFAULT_INTERVALS), source="default")
    unknown = sorted(set(section) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"METRICS: unknown key(s) {unknown} (known: {sorted(KNOWN_KEYS)})")
    return Schedule({g: _interval(section, g.upper(), total_steps) for g in GROUPS})  # ALERTS: core/alerts.py


def _has_section(config: Mapping[str, Any] | None) -> bool:
    """True if the config names a METRICS section at all (an empty one disables every group)."""
    config = config or {}
    schedule = config.get("SCHEDULE")
    return config.get("METRICS") is not None or (isinstance(schedule, Mapping) and schedule.get("METRICS") is not None)


def _interval(section: Mapping[str, Any], group: str, total_steps: int) -> int:
    interval_key, fraction_key = f"{group}_INTERVAL", f"{group}_FRACTION"
    interval = section.get(interval_key) or 0
    fraction = section.get(fraction_key) or 0
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ConfigError(f"METRICS.{interval_key}: expected a non-negative integer, got {interval!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ConfigError(f"METRICS.{fraction_key}: expected a fraction in (0, 1] or 0, got {fraction!r}")
    if interval and fraction:
        raise ConfigError(
            f"METRICS.{interval_key}={interval} and METRICS.{fraction_key}={fraction} are both set; use one"
        )
    if fraction:
        return max(1, round(fraction * total_steps))
    return interval
