"""Checking the constructor's arguments and building the run spec (``POST /v1/runs``).

The spec's rules are ``client._rules``, the ones the service applies too, so a
misconfigured client fails in its constructor (ValueError/TypeError naming the argument)
rather than later in the sender thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from client import _rules as rules
from client._errors import InvalidType, InvalidValue
from client._rules import TaskInfo, check_int


def check_url(url: Any) -> str:
    """An http(s) URL of the service."""
    if not isinstance(url, str):
        raise InvalidType(f"url: expected a str, got {type(url).__name__}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidValue(f"url: invalid URL {url!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidValue(f"url: expected http(s)://host[:port], got {url!r}")
    return url


def check_bounded_int(value: Any, name: str, low: int, high: int) -> int:
    """An int (not a bool) in [low, high]."""
    return check_int(value, name, low, high)


def check_positive(value: Any, name: str) -> float:
    """A positive finite number (durations and intervals)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidType(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not 0 < value < float("inf"):
        raise InvalidValue(f"{name}: expected a positive number, got {value}")
    return float(value)


def parse_tasks(tasks: Any) -> list[TaskInfo]:
    """``{name: num_classes}`` or ``[{"name", "num_classes", "null_index"?}]`` as TaskInfo."""
    if isinstance(tasks, Mapping):
        tasks = [{"name": k, "num_classes": v} for k, v in tasks.items()]
    elif not isinstance(tasks, list | tuple):
        raise InvalidType(f"tasks: expected a dict or a list of dicts, got {type(tasks).__name__}")
    return list(rules.parse_tasks(tasks))


def parse_subsets(subsets: Any) -> dict[str, list[str]] | None:
    """A declaration ``{family: [labels]}`` (labels deduplicated, order kept)."""
    return None if subsets is None else rules.parse_subsets(subsets)


def freeze_config(config: Any) -> dict[str, Any] | None:
    """A JSON copy of the config (later changes by the caller cannot alter the spec)."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise InvalidType(f"config: expected a dict, got {type(config).__name__}")
    try:
        frozen: dict[str, Any] = json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidValue(
            f"config: must be JSON-serialisable with finite numbers ({exc})"
        ) from exc
    return rules.parse_config(frozen)


def run_body(
    run_id: str,
    world_size: int,
    total_steps: int,
    tasks: list[TaskInfo],
    subsets: dict[str, list[str]] | None,
    config: dict[str, Any] | None,
) -> dict[str, Any]:
    """The body of ``POST /v1/runs``."""
    body: dict[str, Any] = {
        "run_id": run_id,
        "world_size": world_size,
        "total_steps": total_steps,
        "tasks": [
            {"name": t.name, "num_classes": t.num_classes, "null_index": t.null_index}
            for t in tasks
        ],
    }
    if subsets is not None:
        body["subsets"] = subsets
    if config is not None:
        body["config"] = config
    return body
