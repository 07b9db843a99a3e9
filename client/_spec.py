"""Checking the constructor's arguments and building the run spec (``POST /v1/runs``).

The spec's rules are ``client._rules``, the ones the service applies too, so a
misconfigured client fails in its constructor (ValueError/TypeError naming the argument)
rather than later in the sender thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from client import _rules as rules
from client._errors import InvalidType, InvalidValue
from client._rules import TaskInfo, check_int
from client._worker import WorkerConfig

#: what one run's ranks together may post, in requests a second, when ``flush_interval_s`` is
#: left to the client: a one-record delivery costs the service ~1.2-2 ms of CPU (bench/requests.py),
#: so 256 requests a second take a quarter to a half of a core, whatever the world size
RUN_REQUESTS_PER_S = 256
MIN_FLUSH_INTERVAL_S, MAX_FLUSH_INTERVAL_S = 0.2, 5.0


def default_flush_interval(world_size: int) -> float:
    """The sender's cadence for ``world_size`` ranks: 0.2 s up to 51 ranks, then ``world_size / 256``
    seconds (4 s at 1,024 ranks), at most 5 s.

    Each rank posts once an interval whatever it holds, so without this a 1,024-rank run at
    0.2 s makes 5,120 requests a second of one record each: per-request work, not samples,
    would then decide how many cores the service needs (~10 here). Records then wait up to
    the interval on the rank; ``flush()``, ``state_dict()`` and ``close()`` still deliver at once.
    """
    return min(max(MIN_FLUSH_INTERVAL_S, world_size / RUN_REQUESTS_PER_S), MAX_FLUSH_INTERVAL_S)


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


@dataclass(frozen=True)
class ClientArgs:
    """A client's checked constructor arguments: what a pickled copy is rebuilt from.

    The token, an injected transport and a custom clock are not part of it: a token must
    not end up in a ``torch.save`` file, and the others do not cross processes.
    """

    url: str
    run_id: str
    rank: int
    world_size: int
    tasks: tuple[TaskInfo, ...]
    total_steps: int
    body: dict[str, Any]
    worker: WorkerConfig
    binary: bool
    request_timeout_s: float
    open_timeout_s: float
    missing_ranks_grace_s: float


def check_client_args(
    url: Any, run_id: Any, rank: Any, world_size: Any, tasks: Any, total_steps: Any,
    config: Any, subsets: Any, options: Mapping[str, Any],
) -> ClientArgs:
    """Check every constructor argument (the spec by ``client._rules``); raises naming the bad one."""
    run_id = rules.check_run_id(run_id)
    world_size = check_int(world_size, "world_size", 1, rules.MAX_WORLD_SIZE)
    task_list = parse_tasks(tasks)
    total_steps = check_int(total_steps, "total_steps", 1, rules.MAX_STEP)
    body = run_body(run_id, world_size, total_steps, task_list, parse_subsets(subsets), freeze_config(config))
    return ClientArgs(
        url=check_url(url),
        run_id=run_id,
        rank=check_int(rank, "rank", 0, world_size - 1),
        world_size=world_size,
        tasks=tuple(task_list),
        total_steps=total_steps,
        body=body,
        worker=WorkerConfig(
            max_queue_items=check_int(options["max_queue_items"], "max_queue_items", 1, 10**8),
            max_batch_events=check_int(options["max_batch_events"], "max_batch_events", 1, 10_000),
            flush_interval_s=default_flush_interval(world_size) if options["flush_interval_s"] is None
            else check_positive(options["flush_interval_s"], "flush_interval_s"),
            backoff_initial_s=check_positive(options["retry_initial_s"], "retry_initial_s"),
            backoff_max_s=check_positive(options["retry_max_s"], "retry_max_s"),
        ),
        binary=bool(options["binary"]),
        request_timeout_s=check_positive(options["request_timeout_s"], "request_timeout_s"),
        open_timeout_s=check_non_negative(options["open_timeout_s"], "open_timeout_s"),
        missing_ranks_grace_s=check_non_negative(options["missing_ranks_grace_s"], "missing_ranks_grace_s"),
    )


def check_non_negative(value: Any, name: str) -> float:
    """A finite number >= 0 (0 turns a wait off)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidType(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not 0 <= value < float("inf"):
        raise InvalidValue(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)
