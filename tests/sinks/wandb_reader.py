"""Reads an offline wandb run file (``run-<id>.wandb``) back, for tests.

The file layout is parsed by ``service.sinks.wandb_log.iter_records`` (the sink reads the
same files to resume after a crash); this module turns records into rows, summary and config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.sinks.wandb_log import iter_records

INTERNAL_KEYS = frozenset({"_step", "_timestamp", "_runtime", "_wandb"})


@dataclass
class RunFile:
    """What a run file says: history rows (with ``_step``), final summary, config and alerts (title, text, level)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    alerts: list[tuple[str, str, str]] = field(default_factory=list)

    def steps(self) -> list[int]:
        return [row["_step"] for row in self.rows]

    def user_rows(self) -> dict[int, dict[str, Any]]:
        """Rows by step without wandb's own keys."""
        return {
            row["_step"]: {k: v for k, v in row.items() if k not in INTERNAL_KEYS}
            for row in self.rows
        }


def find_run_file(root: Path, wandb_run_id: str) -> Path:
    """The one ``run-<id>.wandb`` under ``root``."""
    found = sorted(root.rglob(f"run-{wandb_run_id}.wandb"))
    assert len(found) == 1, f"expected one run file for {wandb_run_id} under {root}: {found}"
    return found[0]


def read_run(path: Path) -> RunFile:
    """Parse every record of a run file."""
    result = RunFile()
    for record in iter_records(path.read_bytes()):
        kind = record.WhichOneof("record_type")
        result.kinds.append(str(kind))
        if kind == "history":
            result.rows.append(_history_row(record.history))
        elif kind == "summary":
            _apply(result.summary, record.summary.update, record.summary.remove)
        elif kind == "run":
            _apply(result.config, record.run.config.update, record.run.config.remove)
        elif kind == "config":
            _apply(result.config, record.config.update, record.config.remove)
        elif kind == "alert":
            result.alerts.append((record.alert.title, record.alert.text, record.alert.level))
    return result


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _history_row(history: Any) -> dict[str, Any]:
    row = {_key(item): json.loads(item.value_json) for item in history.item}
    row.setdefault("_step", history.step.num)
    return row


def _apply(target: dict[str, Any], updates: Any, removes: Any) -> None:
    for item in updates:
        target[_key(item)] = json.loads(item.value_json)
    for item in removes:
        target.pop(_key(item), None)
