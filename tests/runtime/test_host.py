"""A whole run through the host equals the reference for any arrival order (DESIGN §3, §3b)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from client._wire import CompleteEvent, Event, ScalarEvent
from service.core.errors import InvalidInput, SequenceGap, SessionFenced, StepAlreadyCompleted, UnknownSession
from service.runtime.host import RunHost
from service.sinks.memory import MemorySink
from tests.conftest import RunData, make_run, stream_events, to_event
from tests.reference import expected_history, expected_summary

METRICS = {"STEP_INTERVAL": 3, "WANDB_INTERVAL": 4, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 5, "CONSOLE_INTERVAL": 7}
INTERVALS = {"step": 3, "wandb": 4, "lr": 2, "pipeline": 5}
TIMING = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "core/")


def _deliver(data: RunData, order: str, seed: int) -> tuple[RunHost, MemorySink]:
    sink = MemorySink()
    host = RunHost([sink])
    host.create_run(data.spec("r", METRICS))
    streams = {r: stream_events(data, r) for r in range(data.world_size)}
    sessions = {r: host.open_session("r", r)["session"] for r in streams}
    sent = dict.fromkeys(streams, 0)
    rng = random.Random(seed)
    ranks = list(streams)
    if order == "skewed":  # one rank finishes everything before the next starts
        rng.shuffle(ranks)
        for r in ranks:
            _send(host, sessions[r], streams[r], sent, r, len(streams[r]))
    else:
        while any(sent[r] < len(streams[r]) for r in ranks):
            r = rng.choice([r for r in ranks if sent[r] < len(streams[r])])
            _send(host, sessions[r], streams[r], sent, r, rng.randint(1, 6))
    host.finish("r")
    return host, sink


def _send(host: RunHost, session: str, stream: list[Event], sent: dict[int, int], rank: int, n: int) -> None:
    chunk = stream[sent[rank]:sent[rank] + n]
    reply = host.ingest("r", session, sent[rank], chunk)
    sent[rank] += len(chunk)
    assert reply["acked_seq"] == sent[rank]


def _history(host: RunHost) -> dict[str, list[tuple[int, float]]]:
    series = host.history("r", None, None, None)["series"]
    return {k: list(zip(v["steps"], v["values"], strict=True)) for k, v in series.items()
            if not any(t in k for t in TIMING)}


@pytest.mark.parametrize(("order", "seed"), [("interleaved", 1), ("interleaved", 2), ("skewed", 3), ("skewed", 4)])
def test_history_and_summary_equal_reference(order: str, seed: int) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=7, epochs=2)
    host, _ = _deliver(data, order, seed)
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert _history(host) == want
    summary = host.summary("r")["summary"]
    want_summary = expected_summary(data.recs, data.tasks)
    want_summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert summary == want_summary


def test_every_order_gives_identical_state() -> None:
    data = make_run(21, world_size=4, steps_per_epoch=5, epochs=2)
    results = [host.history("r", None, None, None) for host, _ in
               (_deliver(data, o, s) for o, s in [("interleaved", 5), ("interleaved", 6), ("skewed", 7)])]
    assert results[0] == results[1] == results[2]


def test_wandb_rows_carry_step_avg_and_core_keys() -> None:
    data = make_run(31, world_size=2, steps_per_epoch=8, epochs=2)
    _, sink = _deliver(data, "interleaved", 31)
    rows = sink.of("r", "wandb")
    assert [e.step for e in rows] == [4, 8, 12, 16]
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    first_val = dict(want["val/loss"])
    for row in rows:
        assert row.values["core/global_step"] == row.step
        assert row.values["core/train_loss"] == row.values["train/step_avg_loss"] == dict(want["train/step_avg_loss"])[row.step]
        if row.step > 8:  # the first val epoch closed at step 8
            assert row.values["core/val_loss"] == first_val[8]
        else:
            assert "core/val_loss" not in row.values


def test_nothing_emitted_until_every_rank_completed_the_window() -> None:
    data = make_run(41, world_size=2, steps_per_epoch=6, epochs=1)
    sink = MemorySink()
    host = RunHost([sink])
    host.create_run(data.spec("r", METRICS))
    s0, s1 = (host.open_session("r", r)["session"] for r in (0, 1))
    host.ingest("r", s0, 0, stream_events(data, 0))  # rank 0 finishes its epoch
    assert sink.of("r", "step") == [] and sink.of("r", "epoch") == []
    rank1 = [e for e in stream_events(data, 1) if getattr(e, "phase", None) == "train" and hasattr(e, "targets")]
    host.ingest("r", s1, 0, rank1[:4])  # steps 1..4: rank 1 has completed step 3
    assert [e.step for e in sink.of("r", "step")] == [3]
    host.ingest("r", s1, 4, [CompleteEvent(4)])
    assert [e.step for e in sink.of("r", "step")] == [3]  # step 6 window still open
    host.ingest("r", s1, 5, rank1[4:] + [CompleteEvent(6)])
    assert [e.step for e in sink.of("r", "step")] == [3, 6]


def test_duplicate_delivery_changes_nothing() -> None:
    data = make_run(51, world_size=2, steps_per_epoch=4, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    s0 = host.open_session("r", 0)["session"]
    events = stream_events(data, 0)
    host.ingest("r", s0, 0, events[:5])
    before = host.info("r")["ranks"], host.history("r", None, None, None)
    again = host.ingest("r", s0, 0, events[:5])  # the ack was lost; the client resends
    assert again == {"acked_seq": 5, "applied": 0, "ignored": 0}
    assert (host.info("r")["ranks"], host.history("r", None, None, None)) == before
    overlap = host.ingest("r", s0, 3, events[3:8])  # partly new
    assert overlap == {"acked_seq": 8, "applied": 3, "ignored": 0}
    with pytest.raises(SequenceGap) as gap:
        host.ingest("r", s0, 10, events[10:11])
    assert gap.value.expected_seq == 8


def test_rejected_delivery_changes_nothing() -> None:
    data = make_run(61, world_size=1, steps_per_epoch=4, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    s0 = host.open_session("r", 0)["session"]
    train = [to_event(r) for r in data.recs if r.phase == "train"]
    host.ingest("r", s0, 0, train[:3])
    before = host.info("r"), host.history("r", None, None, None)
    bad = to_event(data.recs[3])
    bad.targets["genus"][0] = 99
    with pytest.raises(InvalidInput, match=r"targets.genus: class index 99 outside \[0, 6\)"):
        host.ingest("r", s0, 3, [train[3], bad])
    with pytest.raises(StepAlreadyCompleted, match="step 1 was already completed"):
        host.ingest("r", s0, 3, [ScalarEvent("lr", 1, 0.0, {"x": 1.0})])
    assert (host.info("r"), host.history("r", None, None, None)) == before


def test_newer_session_fences_older() -> None:
    data = make_run(71, world_size=2, steps_per_epoch=2, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    old = host.open_session("r", 1)["session"]
    host.open_session("r", 1)
    with pytest.raises(SessionFenced):
        host.ingest("r", old, 0, stream_events(data, 1)[:1])
    with pytest.raises(UnknownSession):
        host.ingest("r", "nope", 0, [])


def test_sparse_scalars_fire_once_after_new_values_and_match_the_reference() -> None:
    data = make_run(81, world_size=2, steps_per_epoch=9, epochs=1)
    data.scalars = [s for s in data.scalars if s[1] != "lr" or s[2] % 5 == 0]  # lr only every 5 steps
    host, _ = _deliver(data, "interleaved", 81)
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert [s for s, _ in want["train/lr/backbone"]] == [6]  # lr reported at 5: fires at 6 only (not at 8)
    assert _history(host) == want


@pytest.mark.timeout(10)  # work must not grow with the distance to a huge step
def test_a_huge_step_costs_nothing_and_emits_once() -> None:
    data = make_run(91, world_size=1, steps_per_epoch=3, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", {"STEP_INTERVAL": 1, "LR_INTERVAL": 1}))
    session = host.open_session("r", 0)["session"]
    train = [e for e in stream_events(data, 0) if getattr(e, "phase", "train") == "train"][:4]
    host.ingest("r", session, 0, [*train, ScalarEvent("lr", 2**53 - 1, 0.0, {"x": 1.0}), CompleteEvent(2**53)])
    host.finish("r")
    lr = host.history("r", ["train/lr/x"], None, None)["series"]["train/lr/x"]
    assert lr["steps"] == [2**53 - 1]


def test_wandb_rows_carry_the_latest_step_window_at_or_before_them() -> None:
    """STEP 3, WANDB 4: the row at 4 carries the window of 3, at 8 that of 6, at 12 that of 12
    (at 16, the window closed by finish comes after the row: it carries 15)."""
    data = make_run(32, world_size=2, steps_per_epoch=8, epochs=2)
    _, sink = _deliver(data, "interleaved", 32)
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    windows: dict[int, Any] = {}
    carried_steps = []
    for emission in sink.of("r"):
        if emission.group == "step":
            windows[emission.step] = emission.values
        elif emission.group == "wandb":
            latest = max(s for s in windows if s <= emission.step)
            assert emission.carried == {k: v for k, v in windows[latest].items() if k not in emission.values}
            assert emission.carried["train/loss"] == dict(want["train/loss"])[latest]
            carried_steps.append((emission.step, latest))
    assert carried_steps == [(4, 3), (8, 6), (12, 12), (16, 15)]


def test_every_value_says_what_it_is() -> None:
    data = make_run(33, world_size=2, steps_per_epoch=6, epochs=2)
    _, sink = _deliver(data, "interleaved", 33)
    tasks = {t["name"] for t in data.spec("r", METRICS)["tasks"]}
    for emission in sink.of("r"):
        assert set(emission.metrics) == set(emission.row()), emission.group
        for key, metric in emission.metrics.items():
            assert metric.key == key
            if metric.task is not None:
                assert metric.task in tasks and metric.statistic in ("acc1", "acc3", "loss", "val_acc1")
            if metric.statistic == "loss" and metric.kind == "window":
                assert metric.direction == "min"
            if metric.statistic in ("acc1", "acc3", "chain_accuracy", "partial_chain_accuracy"):
                assert metric.direction == "max"
    epoch = sink.of("r", "epoch")[-1]
    val = {m.statistic for m in epoch.metrics.values() if m.phase == "val" and m.family == "rarity"}
    assert {"acc1", "acc3", "chain_accuracy", "partial_chain_accuracy"} <= val


def test_a_blocked_sink_does_not_hold_the_run_lock() -> None:
    """Sinks are called outside the run lock: while one blocks, another rank's delivery is applied."""
    import threading

    data = make_run(34, world_size=2, steps_per_epoch=6, epochs=1)
    entered, release = threading.Event(), threading.Event()

    class Blocking(MemorySink):
        def emit(self, emissions: Any) -> None:
            entered.set()
            release.wait(10)
            super().emit(emissions)

    sink = Blocking()
    host = RunHost([sink])
    host.create_run(data.spec("r", METRICS))
    streams = {r: stream_events(data, r) for r in range(2)}
    sessions = {r: host.open_session("r", r)["session"] for r in streams}
    first = threading.Thread(target=host.ingest, args=("r", sessions[0], 0, streams[0]))
    second = threading.Thread(target=host.ingest, args=("r", sessions[1], 0, streams[1]))
    first.start()
    second.start()
    assert entered.wait(10)  # one delivery's emissions are in the sink, which blocks
    second_done = threading.Event()
    threading.Thread(target=lambda: (second.join(), second_done.set()), daemon=True).start()
    first_done = threading.Event()
    threading.Thread(target=lambda: (first.join(), first_done.set()), daemon=True).start()
    # the delivery that did not get the dispatch turn returns although the sink still blocks
    assert first_done.wait(10) or second_done.wait(10)
    assert host.info("r")["watermark"] >= 0
    release.set()
    first.join(10)
    second.join(10)
    host.finish("r")
    groups = [e.group for e in sink.of("r")]
    assert groups.count("final") == 1 and groups[-1] == "final"


def test_an_ignored_api_key_is_logged_when_the_run_is_created(caplog: pytest.LogCaptureFixture) -> None:
    data = make_run(35, world_size=1, steps_per_epoch=2, epochs=1)
    spec = data.spec("r", METRICS)
    spec["config"]["EXPERIMENT"] = {"WANDB": {"ENABLED": False, "KEY": "do-not-store-me"}}
    host = RunHost([MemorySink()])
    with caplog.at_level("WARNING", logger="linnaeus_metrics.runtime"):
        host.create_run(spec)
        host.create_run(spec)  # the same spec again: not a new run, no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["run r: EXPERIMENT.WANDB.KEY is ignored: the service uses its own WANDB_API_KEY"]
    assert "KEY" not in host.info("r")["config"]["EXPERIMENT"]["WANDB"]
    assert "do-not-store-me" not in caplog.text
