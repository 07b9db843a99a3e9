"""Alerts of a run (DESIGN §11): user rules from ``METRICS.ALERTS`` and built-in rules. Pure.

User rules watch one emitted key: ``{KEY, ABOVE}`` and ``{KEY, BELOW}`` fire when the value
crosses the threshold and re-arm once it is back on the good side (one alert per excursion,
not one per step); ``{KEY, NO_IMPROVEMENT_EPOCHS: n}`` fires when ``n`` emissions of the key
in a row (one per epoch for epoch keys) did not beat its best, in the key's own direction
(the emission's ``direction``; a key without one is never judged), and re-arms on the next
improvement. ``NAME`` defaults to the rule's text, ``LEVEL`` to WARN.

Built-in rules:

- ``nonfinite``: the wire refuses NaN and infinities, so a rank reports what it saw as a
  count: a ``pipeline`` or ``custom`` scalar named ``nonfinite/<what>`` (e.g.
  ``mc.log_custom(step, {"nonfinite/loss": 1})`` when the loss was NaN) fires an ERROR alert
  naming the rank whenever its value is above 0.
- ``stall``: a rank delivered nothing for longer than the service's ``stall_alert_s`` (the
  runtime asks :meth:`AlertBook.stalls` with its clock, journals what it gets and
  :meth:`AlertBook.record`s it, so stalls survive restarts); re-armed by its next delivery.
- ``restore``: the run was rolled back to a snapshot.

Restores keep the alerts fired so far (they are history) and restart the rules' tracking.

>>> book = AlertBook(parse_rules({"METRICS": {"ALERTS": [{"KEY": "train/loss", "ABOVE": 5}]}}))
>>> [a.step for a in book.observe(10, {"train/loss": 6.0}, {})]
[10]
>>> book.observe(20, {"train/loss": 7.0}, {}), len(book.observe(30, {"train/loss": 2.0}, {}))
([], 0)
>>> [a.message for a in book.observe(40, {"train/loss": 9.0}, {})]
['train/loss above 5.0: 9.0 at step 40']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import ConfigError
from service.core.schedule import metrics_section

LEVELS = ("INFO", "WARN", "ERROR")
CONDITIONS = ("ABOVE", "BELOW", "NO_IMPROVEMENT_EPOCHS")
RULE_KEYS = ("KEY", *CONDITIONS, "NAME", "LEVEL")
MAX_RULES = 256
MAX_TEXT = 256
NONFINITE_PREFIX = "nonfinite/"


@dataclass(frozen=True)
class Rule:
    """One user rule: ``condition`` (``ABOVE``, ``BELOW``, ``NO_IMPROVEMENT_EPOCHS``) on ``key``."""

    key: str
    condition: str
    threshold: float
    name: str
    level: str

    def describe(self) -> str:
        """The rule as text, e.g. ``train/loss above 5.0``."""
        if self.condition == "NO_IMPROVEMENT_EPOCHS":
            return f"{self.key} no improvement for {int(self.threshold)} epochs"
        return f"{self.key} {self.condition.lower()} {self.threshold}"


@dataclass(frozen=True)
class Alert:
    """A fired alert; ``key``/``value``/``rank`` are None where they do not apply."""

    name: str
    level: str
    key: str | None
    step: int
    value: float | None
    rule: str
    message: str
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the ``alerts`` items of ``GET /v1/runs/{run}`` and the stream); field by
        field, not ``dataclasses.asdict`` (a deep copy of every value: slow in recovery images)."""
        return {"name": self.name, "level": self.level, "key": self.key, "step": self.step, "value": self.value,
                "rule": self.rule, "message": self.message, "rank": self.rank}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """Inverse of ``to_dict``."""
        value, rank = data.get("value"), data.get("rank")
        return cls(str(data["name"]), str(data["level"]), data.get("key"), int(data["step"]),
                   None if value is None else float(value), str(data["rule"]), str(data["message"]),
                   None if rank is None else int(rank))


def parse_rules(config: Mapping[str, Any] | None) -> tuple[Rule, ...]:
    """The user rules of ``METRICS.ALERTS`` (or ``SCHEDULE.METRICS.ALERTS``).

    Raises:
        ConfigError: naming the rule's position and the bad key or value.
    """
    raw = metrics_section(config).get("ALERTS")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"METRICS.ALERTS: expected a list of rules, got {type(raw).__name__}")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"METRICS.ALERTS: at most {MAX_RULES} rules, got {len(raw)}")
    return tuple(_rule(item, f"METRICS.ALERTS[{i}]") for i, item in enumerate(raw))


def _rule(item: Any, where: str) -> Rule:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping such as {{KEY: train/loss, ABOVE: 5.0}}, got {item!r}")
    unknown = sorted(str(k) for k in item if k not in RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(RULE_KEYS)})")
    given = [c for c in CONDITIONS if c in item]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(CONDITIONS)}, got {given or 'none'}")
    condition = given[0]
    key = _text(item, "KEY", where, required=True) or ""
    threshold = _threshold(item[condition], f"{where}.{condition}", condition)
    level = _level(item, where)
    name = _text(item, "NAME", where) or Rule(key, condition, threshold, "", level).describe()
    return Rule(key, condition, threshold, name, level)


def _text(item: Mapping[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or not value.isprintable():
        raise ConfigError(f"{where}.{key}: expected a non-empty printable string of at most {MAX_TEXT} "
                          f"characters, got {value!r}")
    return value


def _threshold(value: Any, where: str, condition: str) -> float:
    if condition == "NO_IMPROVEMENT_EPOCHS":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise ConfigError(f"{where}: expected an integer number of epochs in [1, 1000000], got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _level(item: Mapping[str, Any], where: str) -> str:
    value = item.get("LEVEL", "WARN")
    if not isinstance(value, str) or value.upper() not in LEVELS:
        raise ConfigError(f"{where}.LEVEL: expected one of {', '.join(LEVELS)}, got {value!r}")
    return value.upper()


@dataclass
class _Tracking:
    """What a rule remembers between observations."""

    active: bool = False
    best: float | None = None
    since_best: int = 0


@dataclass
class AlertBook:
    """A run's rules, their tracking and the alerts fired so far."""

    rules: tuple[Rule, ...] = ()
    fired: list[Alert] = field(default_factory=list)
    tracking: dict[int, _Tracking] = field(default_factory=dict)
    stalled: set[int] = field(default_factory=set)

    def observe(self, step: int, values: Mapping[str, float], directions: Mapping[str, str | None]) -> list[Alert]:
        """Judge one emission (its values and each key's direction); returns the new alerts."""
        new = []
        for index, rule in enumerate(self.rules):
            value = values.get(rule.key)
            if value is not None and self._judge(index, rule, value, directions.get(rule.key)):
                new.append(Alert(rule.name, rule.level, rule.key, step, value, rule.describe(),
                                 f"{rule.describe()}: {value} at step {step}"))
        return self._keep(new)

    def _judge(self, index: int, rule: Rule, value: float, direction: str | None) -> bool:
        track = self.tracking.setdefault(index, _Tracking())
        if rule.condition == "NO_IMPROVEMENT_EPOCHS":
            return _stagnant(track, value, direction, int(rule.threshold))
        violated = value > rule.threshold if rule.condition == "ABOVE" else value < rule.threshold
        fires = violated and not track.active
        track.active = violated
        return fires

    def observe_scalars(self, rank: int, kind: str, step: int, values: Mapping[str, float]) -> list[Alert]:
        """Built-in ``nonfinite``: a rank's ``nonfinite/<what>`` count above 0."""
        if kind not in ("pipeline", "custom"):
            return []
        new = [Alert("nonfinite", "ERROR", f"{kind}/{name}", step, value, "nonfinite",
                     f"rank {rank} reported {value:g} non-finite {name[len(NONFINITE_PREFIX):]} at step {step}", rank)
               for name, value in values.items() if name.startswith(NONFINITE_PREFIX) and value > 0]
        return self._keep(new)

    def stalls(self, now: float, last_seen: Mapping[int, float], step: int, threshold_s: float) -> list[Alert]:
        """Built-in ``stall``: ranks silent for longer than ``threshold_s`` at ``now`` and not yet
        reported; changes nothing (the caller makes them durable, then ``record``s them)."""
        new = []
        for rank, seen in sorted(last_seen.items()):
            silent = now - seen
            if silent > threshold_s and rank not in self.stalled:
                new.append(Alert("stall", "WARN", None, step, round(silent, 3), f"stall > {threshold_s:g} s",
                                 f"rank {rank} has delivered nothing for {silent:.0f} s", rank))
        return new

    def record(self, alert: Alert) -> None:
        """Keep an alert decided outside the rules above (a stall, journaled by the runtime)."""
        if alert.name == "stall" and alert.rank is not None:
            self.stalled.add(alert.rank)
        self.fired.append(alert)

    def seen(self, rank: int) -> None:
        """A delivery from ``rank``: its stall alert re-arms."""
        self.stalled.discard(rank)

    def restored(self, step: int, snapshot_id: str) -> list[Alert]:
        """Built-in ``restore``: the run rolled back to a snapshot cut at ``step``."""
        self.tracking.clear()
        return self._keep([Alert("restore", "WARN", None, step, None, "restore",
                                 f"run rolled back to snapshot {snapshot_id[:12]} (cut at step {step})")])

    def _keep(self, new: list[Alert]) -> list[Alert]:
        self.fired.extend(new)
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for recovery images (the rules come from the spec again)."""
        return {"fired": [a.to_dict() for a in self.fired], "stalled": sorted(self.stalled),
                "tracking": {str(i): {"active": t.active, "best": t.best, "since_best": t.since_best}
                             for i, t in self.tracking.items()}}

    @classmethod
    def from_dict(cls, rules: tuple[Rule, ...], data: Mapping[str, Any]) -> AlertBook:
        """Inverse of ``to_dict``."""
        return cls(rules, [Alert.from_dict(a) for a in data.get("fired", [])],
                   {int(i): _Tracking(**t) for i, t in data.get("tracking", {}).items()},
                   {int(r) for r in data.get("stalled", [])})


def _stagnant(track: _Tracking, value: float, direction: str | None, epochs: int) -> bool:
    if direction not in ("min", "max"):
        return False
    improved = track.best is None or (value < track.best if direction == "min" else value > track.best)
    if improved:
        track.best, track.since_best, track.active = value, 0, False
        return False
    track.since_best += 1
    fires = track.since_best >= epochs and not track.active
    track.active = track.active or fires
    return fires


def directions_of(metrics: Mapping[str, Any]) -> dict[str, str | None]:
    """``{key: direction}`` from an emission's metric identities."""
    return {k: getattr(m, "direction", None) for k, m in metrics.items()}


def alert_dicts(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """Alerts as JSON-safe dicts."""
    return [a.to_dict() for a in alerts]
