"""Property-based fuzz of every route from the service's own OpenAPI document (schemathesis).

Invariants (DESIGN §6): no generated request gets a 5xx; every 4xx is the JSON error shape
``{"type", "detail"}`` and leaves every reader-visible state unchanged; after the fuzz a
restart on the same data dir replays the journal to the very same state (so nothing that
was refused was journaled). A real uvicorn on loopback serves the app, so uvicorn's own
HTTP parsing is part of what is fuzzed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import Settings
from service.sinks.memory import MemorySink
from tests.api.fuzz._live import LISTING, fingerprint, live_service
from tests.api.fuzz._seed import RUN, Seeded, seed_run

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

EXAMPLES = 500
MIN_CASES = 450
RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
DESTRUCTIVE = re.compile(r"^(DELETE /v1/runs/\{run_id\}|POST /v1/runs/\{run_id\}/finish)$")
CASES: dict[str, int] = {}


def _msgpack(ctx: Any, value: Any) -> bytes:
    """Generated msgpack bodies: raw bytes as they are, anything else packed."""
    raw = getattr(value, "data", value)  # schemathesis wraps generated binary strings
    if isinstance(raw, bytes):
        return raw
    return bytes(msgpack.packb(value, use_bin_type=True))


schemathesis.serializer("application/msgpack")(_msgpack)


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", durable=True, sqlite_synchronous="NORMAL", wandb_enabled=False,
                    console_enabled=False, checkpoint_wait_max_s=0.05, max_runs=100_000)


def _strategy(document: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Cases anywhere (generated path parameters) and cases aimed at the seeded run."""
    from schemathesis import GenerationMode

    # the stream never ends by itself: tests/e2e/test_stream.py covers it
    schema = schemathesis.openapi.from_dict(document).exclude(path_regex=r"/stream$")
    on_run = schema.include(path_regex=r"^/v1/runs/\{run_id\}").exclude(method="DELETE").exclude(
        path_regex=r"/finish$")
    return st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        on_run.as_strategy(GenerationMode.POSITIVE, path_parameters={"run_id": RUN}),
        on_run.as_strategy(GenerationMode.NEGATIVE, path_parameters={"run_id": RUN}),
    )


class Fuzzer:
    """Sends cases and checks the invariants; remembers live sessions to aim deliveries."""

    def __init__(self, url: str, client: httpx.Client, seeded: Seeded) -> None:
        self.url, self.client, self.seeded = url, client, seeded
        self.session = requests.Session()
        self.statuses: dict[int, int] = {}
        self.known: dict[str, Any] = {}

    def aim(self, case: Any, rank: int, at_next_seq: bool) -> None:
        """Point a generated delivery or restore at a live session (and the expected seq)."""
        body = case.body
        if case.path_parameters.get("run_id") != RUN or not isinstance(body, dict) or "session" not in body:
            return
        body["session"] = self.seeded.sessions[rank]
        if at_next_seq and "seq" in body:
            body["seq"] = self.seeded.next_seq[rank]

    def targets(self, case: Any) -> list[str]:
        run_id = (case.path_parameters or {}).get("run_id")
        if isinstance(run_id, str) and RUN_ID.match(run_id) and run_id not in {".", ".."}:
            return [RUN, run_id]
        return [RUN]

    def check(self, case: Any) -> None:
        targets = self.targets(case)
        before = self._known(targets)
        reply = case.call(base_url=self.url, session=self.session, timeout=30)
        status = reply.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
        repro = f"{status} {reply.text[:500]}\nreproduce: {case.as_curl_command()}"
        assert status < 500, repro
        if status >= 400:
            self._check_refusal(reply, before, targets, repro)
        else:
            self.known.clear()  # anything may have changed
            self._learn(case, reply)

    def _known(self, targets: list[str]) -> dict[str, Any]:
        """The fingerprint of ``targets``, from the last refusal when nothing was accepted since."""
        missing = [t for t in targets if t not in self.known]
        if missing or LISTING not in self.known:
            self.known.update(fingerprint(self.client, missing))
        return {k: self.known[k] for k in (LISTING, *targets)}

    def _check_refusal(self, reply: Any, before: dict[str, Any], targets: list[str], repro: str) -> None:
        if _content_type(reply).startswith("application/json"):
            body = reply.json()
            assert isinstance(body, dict) and {"type", "detail"} <= set(body), repro
            assert isinstance(body["type"], str) and isinstance(body["detail"], str) and body["detail"], repro
        else:  # only uvicorn's own "Invalid HTTP request" never reaches the app
            assert reply.status_code == 400, repro
        after = fingerprint(self.client, targets)
        assert after == before, f"a refused request changed state\n{repro}"
        self.known.update(after)

    def _learn(self, case: Any, reply: Any) -> None:
        label = case.operation.label
        if case.path_parameters.get("run_id") != RUN:
            return
        if label == "POST /v1/runs/{run_id}/sessions":
            opened = reply.json()
            self.seeded.sessions[opened["rank"]] = opened["session"]
            self.seeded.next_seq[opened["rank"]] = 0
        elif label == "POST /v1/runs/{run_id}/events":
            for rank, session in self.seeded.sessions.items():
                if case.body.get("session") == session:
                    self.seeded.next_seq[rank] = reply.json()["acked_seq"]


def test_openapi_fuzz_never_5xx_and_refusals_change_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    cfg = _settings(tmp_path)
    with live_service(cfg, [MemorySink()]) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        fuzzer = Fuzzer(live.url, client, seed_run(client))
        strategy = _strategy(client.get("/openapi.json").json())

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                         HealthCheck.data_too_large])
        @given(case=strategy, rank=st.sampled_from([0, 1]), at_next_seq=st.booleans())
        def fuzz(case: Any, rank: int, at_next_seq: bool) -> None:
            if DESTRUCTIVE.match(case.operation.label) and case.path_parameters.get("run_id") == RUN:
                return  # the seeded run must survive; finish/delete elsewhere are fuzzed
            fuzzer.aim(case, rank, at_next_seq)
            fuzzer.check(case)

        try:
            fuzz()
        finally:
            fuzzer.session.close()
        final = _stable(fingerprint(client, client_run_ids(client)))
    with live_service(cfg, [MemorySink()]) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        assert _stable(fingerprint(client, client_run_ids(client))) == final
    total = sum(CASES.values())
    print(f"openapi fuzz: {total} cases over {len(CASES)} operations in {time.monotonic() - started:.1f} s; "
          f"statuses {fuzzer.statuses}")
    assert total >= MIN_CASES, CASES
    assert len(CASES) >= 12, f"too few operations reached: {sorted(CASES)}"


def _content_type(reply: Any) -> str:
    """schemathesis keeps every header as a list of values."""
    values = {k.lower(): v for k, v in reply.headers.items()}.get("content-type") or [""]
    return str(values[0])


def client_run_ids(client: httpx.Client) -> list[str]:
    """Every run the service holds."""
    return [r["run_id"] for r in client.get("/v1/runs").json()["runs"]]


def _stable(fp: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint without what a restart legitimately resets (sink figures of the new sinks)."""
    for key, parts in fp.items():
        if key != LISTING:
            parts[""][1].pop("sinks", None)
    return fp
