"""Fuzz of ``POST /v1/runs/{run}/events``: random bodies and damaged valid deliveries.

Invariants (DESIGN §6, §9): never a 5xx; every 4xx is ``{"type", "detail"}`` and changes
nothing a reader can see (info, history, summary, metrics, snapshot of the run); after the
fuzz, a restart on the same data dir rebuilds every run exactly (nothing refused was
journaled). Each damaged delivery goes to a run in the same seeded state (real data from
every rank), so examples are independent and shrink cleanly.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client._wire import EVENT_KINDS, JSON_TYPE, MSGPACK_TYPE, CheckpointEvent, CompleteEvent
from service.settings import Settings
from service.sinks.memory import MemorySink
from tests.api.fuzz import _mutations as mut
from tests.api.fuzz._live import fingerprint, host_state, live_service
from tests.api.fuzz._seed import DATA, METRICS, Seeded, delivery, describe, seed_run

DAMAGED_EXAMPLES = 700
RANDOM_EXAMPLES = 300
TASKS = {t["name"]: t["num_classes"] for t in DATA.spec("x", METRICS)["tasks"]}
STRUCTURAL = ["drop_any", "replace_any", "add_any", "damage_array"]
CASES: Counter[str] = Counter()
BROKEN_BY_EARLIER_MUTATION = contextlib.suppress(LookupError, TypeError, AttributeError, ValueError, StopIteration)
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])


class Bench:
    """One live service; sends bodies and checks the invariants.

    A refused delivery leaves its run exactly as seeded (that is what ``check`` asserts),
    so the next example reuses the run and its last fingerprint; only an accepted one
    costs a fresh run.
    """

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.runs = 0
        self.clean: Seeded | None = None
        self.known: dict[str, Any] = {}
        self.statuses: Counter[int] = Counter()
        self.details: Counter[str] = Counter()

    def run(self) -> Seeded:
        """A run in its seeded state."""
        if self.clean is None:
            self.runs += 1
            self.clean = seed_run(self.client, f"ev{self.runs}")
        return self.clean

    def check(self, run_id: str, raw: bytes, content_type: str) -> httpx.Response:
        before = self.known.pop(run_id, None) or fingerprint(self.client, [run_id], listing=False)
        path = f"/v1/runs/{run_id}/events"
        reply = self.client.post(path, content=raw, headers={"content-type": content_type})
        self._tally(reply)
        repro = f"{reply.status_code} {reply.text[:400]}\nreproduce: {describe('POST', path, content_type, raw)}"
        assert reply.status_code < 500, repro
        if reply.status_code < 400:
            self.clean = None if self.clean is not None and self.clean.run_id == run_id else self.clean
            return reply
        body = reply.json()
        assert {"type", "detail"} <= set(body) and body["detail"], repro
        after = fingerprint(self.client, [run_id], listing=False)
        assert after == before, f"a refused delivery changed state\n{repro}"
        self.known[run_id] = after
        return reply

    def _tally(self, reply: httpx.Response) -> None:
        self.statuses[reply.status_code] += 1
        if reply.status_code >= 400 and reply.headers.get("content-type") == "application/json":
            self.details[re.sub(r"\d+", "N", reply.json().get("detail", "").split(":")[0])[:50]] += 1


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", durable=True, sqlite_synchronous="NORMAL", wandb_enabled=False,
                    console_enabled=False, max_runs=100_000)


def _content_type(draw: Any, binary: bool) -> str:
    proper = MSGPACK_TYPE if binary else JSON_TYPE
    other = JSON_TYPE if binary else MSGPACK_TYPE
    return str(draw(st.sampled_from([proper] * 16 + [f"{proper}; charset=utf-8", other, "text/plain", ""])))


def _damaged(draw: Any, seeded: Seeded) -> tuple[bytes, str]:
    """A valid delivery of the next events, damaged by 1-3 mutations, encoded, maybe byte-damaged."""
    rest = seeded.rest(0)
    start = draw(st.integers(0, len(rest) - 1))
    extra = draw(st.sampled_from([[], [CompleteEvent(4)], [CheckpointEvent("c1")]]))
    events = rest[start:start + draw(st.integers(1, 3))] + extra
    # deep copy: encode_event shares the scalar events' dicts with the module's streams
    body = copy.deepcopy(delivery(seeded.sessions[0], seeded.next_seq[0], events, binary=False))
    names = draw(st.lists(st.sampled_from([f.__name__ for f in mut.SEMANTIC] + STRUCTURAL), min_size=1, max_size=3))
    for name in names:
        if name not in STRUCTURAL:
            with BROKEN_BY_EARLIER_MUTATION:
                getattr(mut, name)(body, draw, TASKS)
    binary = draw(st.booleans())
    if binary:
        with BROKEN_BY_EARLIER_MUTATION:
            mut.binarize(body)
        names += ["damage_array"] if draw(st.booleans()) else []
    for name in names:
        with BROKEN_BY_EARLIER_MUTATION:
            if name in ("replace_any", "add_any"):
                getattr(mut, name)(body, draw, binary)
            elif name in STRUCTURAL:
                getattr(mut, name)(body, draw)
    CASES.update(f"damaged:{name}" for name in names)
    return mut.damage_bytes(mut.encode(body, binary), draw, binary), _content_type(draw, binary)


def test_damaged_deliveries_are_refused_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    cfg = _settings(tmp_path)
    with live_service(cfg, [MemorySink()]) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        bench = Bench(client)

        @settings(FUZZ_SETTINGS, max_examples=DAMAGED_EXAMPLES)
        @given(data=st.data())
        def fuzz(data: Any) -> None:
            seeded = bench.run()
            raw, content_type = _damaged(data.draw, seeded)
            bench.check(seeded.run_id, raw, content_type)
            CASES["damaged"] += 1

        fuzz()
        before_restart = host_state(live.app)
    with live_service(cfg, [MemorySink()]) as live:
        assert host_state(live.app) == before_restart
    print(f"damaged deliveries: {CASES['damaged']} cases in {time.monotonic() - started:.1f} s; "
          f"statuses {dict(bench.statuses)}; top refusals {bench.details.most_common(8)}")
    assert CASES["damaged"] >= DAMAGED_EXAMPLES * 0.9
    assert bench.statuses[422] > 0 and bench.statuses[409] > 0 and bench.statuses[404] > 0


# ---------------------------------------------------------------- random bodies

NAMES = st.sampled_from([*sorted(TASKS), "nope", "", "a b"])
INTS = st.one_of(st.integers(0, 12), st.sampled_from(mut.OUT_OF_RANGE_INTS))
INT_ARRAYS = st.one_of(st.lists(INTS, max_size=4), st.lists(st.lists(INTS, max_size=4), max_size=3), mut.JUNK)
EVENT_LIKE = st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(EVENT_KINDS), mut.JUNK)},
    optional={"step": st.one_of(INTS, mut.JUNK), "epoch": INTS, "phase": st.sampled_from(["train", "val", "x y"]),
              "time": st.one_of(mut.SAFE_FLOATS, mut.JUNK), "targets": st.dictionaries(NAMES, INT_ARRAYS, max_size=3),
              "topk": st.dictionaries(NAMES, INT_ARRAYS, max_size=3), "values": st.dictionaries(NAMES, mut.JUNK),
              "through_step": INTS, "id": st.one_of(NAMES, mut.JUNK), "sizes": st.lists(INTS, max_size=3),
              "loss": mut.JUNK, "subsets": mut.JUNK, "sample_losses": mut.JUNK})


def _random_body(draw: Any, seeded: Seeded) -> Any:
    shaped = st.fixed_dictionaries({
        "session": st.sampled_from([seeded.sessions[0]] * 3 + [seeded.sessions[1]]) | mut.JUNK,
        "seq": st.sampled_from([seeded.next_seq[0]] * 3 + [0, -1, 2**63]) | mut.JUNK,
        "events": st.lists(EVENT_LIKE, max_size=4) | mut.JUNK})
    return draw(st.one_of(mut.JUNK, shaped, shaped))


def test_random_bodies_are_refused_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    with live_service(_settings(tmp_path), [MemorySink()]) as live, httpx.Client(
            base_url=live.url, timeout=10) as client:
        bench = Bench(client)

        @settings(FUZZ_SETTINGS, max_examples=RANDOM_EXAMPLES)
        @given(data=st.data())
        def fuzz(data: Any) -> None:
            seeded = bench.run()
            binary = data.draw(st.booleans())
            if data.draw(st.integers(0, 9)) == 0:
                raw = data.draw(st.binary(max_size=64))
            else:
                raw = mut.damage_bytes(mut.encode(_random_body(data.draw, seeded), binary), data.draw, binary)
            bench.check(seeded.run_id, raw, _content_type(data.draw, binary))
            CASES["random"] += 1

        fuzz()
    print(f"random bodies: {CASES['random']} cases in {time.monotonic() - started:.1f} s; "
          f"statuses {dict(bench.statuses)}; top refusals {bench.details.most_common(8)}")
    assert CASES["random"] >= RANDOM_EXAMPLES * 0.9
