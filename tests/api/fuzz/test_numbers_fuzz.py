"""Fuzz: non-finite and out-of-range numbers in every body, ``POST /v1/runs`` included (issue 13).

Seeded random cases (not hypothesis: its report of a failing 400-digit example broke pytest's
reporting). Any numeric leaf of a valid body (a run spec and its config, a session, a delivery, a
restore's snapshot) is replaced by NaN, +-Infinity, 1e999, an integer beyond int64 or one of
400 digits. Invariants: never a 5xx, on that request or on reading the run afterwards; a
refusal is ``{"type", "detail"}`` and changes nothing a reader can see.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import httpx
import pytest

from client._wire import JSON_TYPE
from service.settings import Settings
from tests.api.fuzz import _mutations as mut
from tests.api.fuzz._live import fingerprint, live_service
from tests.api.fuzz._seed import DATA, METRICS, STREAMS, delivery, describe, seed_run

EXAMPLES = 40
BAD_NUMBERS = [math.nan, math.inf, -math.inf, mut.BIG, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400)]


def _numeric_paths(body: Any) -> list[tuple[Any, ...]]:
    return [p for p in mut.paths(body) if isinstance(mut.at(body, p), int | float)
            and not isinstance(mut.at(body, p), bool)]


def _cases(body: Any, rng: random.Random, count: int) -> list[tuple[tuple[Any, ...], Any]]:
    """``count`` (path, bad number) pairs drawn with ``rng`` (every path when there are few)."""
    pairs = [(path, bad) for path in _numeric_paths(body) for bad in BAD_NUMBERS]
    return pairs if len(pairs) <= count else rng.sample(pairs, count)


def _poisoned(body: Any, path: tuple[Any, ...], bad: Any) -> bytes:
    body = copy.deepcopy(body)
    mut.parent(body, path)[path[-1]] = bad
    return mut.encode(body, binary=False)


def _check(client: httpx.Client, path: str, raw: bytes, readable: list[str]) -> tuple[httpx.Response, str | None]:
    """The reply, and what broke an invariant (None: nothing)."""
    before = fingerprint(client, readable)
    reply = client.post(path, content=raw, headers={"content-type": JSON_TYPE})
    repro = f"{reply.status_code} {reply.text[:200]} <- {describe('POST', path, JSON_TYPE, raw)[:600]}"
    if reply.status_code >= 500:
        return reply, repro
    if reply.status_code >= 400:
        if not {"type", "detail"} <= set(reply.json()):
            return reply, f"no type/detail: {repro}"
        if fingerprint(client, readable) != before:
            return reply, f"a refused request changed state: {repro}"
    return reply, None


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = Settings(data_dir=tmp_path_factory.mktemp("numbers") / "data", sqlite_synchronous="NORMAL",
                   wandb_enabled=False, console_enabled=False, max_runs=100_000)
    with live_service(cfg) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        yield http


def test_run_specs_with_bad_numbers(client: httpx.Client) -> None:
    spec = DATA.spec("spec", {**METRICS, "CONSOLE_FRACTION": 0.5})
    spec["config"]["EXPERIMENT"] = {"NOTES": "n", "WANDB": {"ENABLED": False}, "EXTRA": {"lr": 0.001, "n": [1, 2]}}
    broken = []
    for i, (path, bad) in enumerate(_cases(spec, random.Random(13), EXAMPLES)):
        run_id = f"spec{i}"
        reply, problem = _check(client, "/v1/runs", _poisoned({**spec, "run_id": run_id}, path, bad), [])
        if problem is None and reply.status_code < 400:  # accepted: every read of the run must still work
            reads = {part: client.get(f"/v1/runs/{run_id}{part}").status_code
                     for part in ("", "/snapshot", "/metrics", "/history", "/summary")}
            problem = f"run {path} = {bad!r:.30} accepted, reads {reads}" if max(reads.values()) >= 500 else None
        if problem is not None:
            broken.append(problem)
    assert not broken, f"{len(broken)} of {EXAMPLES} cases broke an invariant, e.g. {broken[0][:500]}"


def test_sessions_deliveries_and_restores_with_bad_numbers(client: httpx.Client) -> None:
    seeded = seed_run(client, "numbers")
    snapshot = client.get("/v1/runs/numbers/snapshot").json()
    bodies = {"sessions": {"rank": 0},
              "events": delivery(seeded.sessions[0], seeded.next_seq[0], STREAMS[0][seeded.next_seq[0]:][:3], False),
              "restore": {"session": seeded.sessions[0], "snapshot": snapshot}}
    rng = random.Random(17)
    broken, tried = [], 0
    for route, body in bodies.items():
        for path, bad in _cases(body, rng, EXAMPLES):
            reply, problem = _check(client, f"/v1/runs/numbers/{route}", _poisoned(body, path, bad), ["numbers"])
            if problem is None and reply.status_code < 400:
                problem = f"{route}: {path} = {bad!r:.30} was accepted: {reply.text[:200]}"
            broken += [problem] if problem else []
            tried += 1
    assert tried >= EXAMPLES * 2
    assert not broken, f"{len(broken)} of {tried} cases broke an invariant, e.g. {broken[0][:500]}"
