"""Checking the constructor's arguments and building the run spec (``POST /v1/runs``).

The checks mirror the service's, so a misconfigured client fails in its constructor
(ValueError/TypeError naming the argument) rather than later in the sender thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from client._errors import InvalidType, InvalidValue
from client._records import check_family, check_name
from client._wire import TaskInfo

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_CLASSES = 2**31 - 1
MAX_WORLD_SIZE = 65_536


def check_url(url: Any) -> str:
    """An http(s) URL of the service, or several replicas' URLs (a list, or separated by commas)."""
    if isinstance(url, list | tuple) and url:
        return ",".join(check_url(u) for u in url)
    if not isinstance(url, str):
        raise InvalidType(f"url: expected a str or a list of str, got {type(url).__name__}")
    if "," in url:
        return check_url([u.strip() for u in url.split(",")])
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidValue(f"url: invalid URL {url!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidValue(f"url: expected http(s)://host[:port], got {url!r}")
    return url


def check_run_id(run_id: Any) -> str:
    """A run id as the service allows it."""
    if not isinstance(run_id, str):
        raise InvalidType(f"run_id: expected a str, got {type(run_id).__name__}")
    if not RUN_ID_PATTERN.match(run_id) or run_id in {".", ".."}:
        raise InvalidValue(f"run_id: invalid run id {run_id!r} (allowed: {RUN_ID_PATTERN.pattern})")
    return run_id


def check_bounded_int(value: Any, name: str, low: int, high: int) -> int:
    """An int (not a bool) in [low, high]."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidType(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidValue(f"{name}: expected an integer in [{low}, {high}], got {value}")
    return value


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
        items: list[Any] = [{"name": k, "num_classes": v} for k, v in tasks.items()]
    elif isinstance(tasks, list | tuple):
        items = list(tasks)
    else:
        raise InvalidType(f"tasks: expected a dict or a list of dicts, got {type(tasks).__name__}")
    if not items:
        raise InvalidValue("tasks: expected at least one task, got none")
    parsed = [_task(item, i) for i, item in enumerate(items)]
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise InvalidValue(f"tasks: duplicate task names in {names}")
    return parsed


def _task(item: Any, index: int) -> TaskInfo:
    if not isinstance(item, Mapping):
        raise InvalidType(f"tasks[{index}]: expected a dict, got {type(item).__name__}")
    unknown = sorted(set(item) - {"name", "num_classes", "null_index"})
    if unknown:
        raise InvalidValue(f"tasks[{index}]: unknown field(s) {unknown}")
    name = check_name(item.get("name"), f"tasks[{index}].name", InvalidValue)
    num_classes = check_bounded_int(
        item.get("num_classes"), f"tasks[{name!r}].num_classes", 1, MAX_CLASSES
    )
    null_index = check_bounded_int(
        item.get("null_index", 0), f"tasks[{name!r}].null_index", 0, num_classes - 1
    )
    return TaskInfo(name, num_classes, null_index)


def parse_subsets(subsets: Any) -> dict[str, list[str]] | None:
    """A declaration ``{family: [labels]}`` (labels deduplicated, order kept)."""
    if subsets is None:
        return None
    if not isinstance(subsets, Mapping):
        raise InvalidType(
            f"subsets: expected a dict of family -> labels, got {type(subsets).__name__}"
        )
    out = {}
    for family, labels in subsets.items():
        check_family(family, "subsets", InvalidValue)
        if isinstance(labels, str) or not isinstance(labels, list | tuple):
            raise InvalidType(
                f"subsets[{family!r}]: expected a list of labels, got {type(labels).__name__}"
            )
        out[family] = list(
            dict.fromkeys(check_name(v, f"subsets[{family!r}] label", InvalidValue) for v in labels)
        )
    return out


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
    return frozen


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
