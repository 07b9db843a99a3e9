"""Columnar blocks (``kind: batches``): the service ends up in the same state as with the records
sent one by one, and both equal the plain reference; bad blocks are refused by name, changing nothing."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest

from client._wire import (
    MSGPACK_TYPE,
    BatchBlock,
    BatchEvent,
    CheckpointEvent,
    EndEpochEvent,
    Event,
    ScalarEvent,
    WireError,
    block_key,
    block_of,
    block_spans,
    decode_events,
    encode_event,
    logical_events,
    pack_body,
    record_count,
    unpack_body,
)
from service.core.errors import InvalidInput, StepAlreadyCompleted
from service.core.run_state import RunState
from service.core.spec import parse_spec
from service.runtime.host import RunHost
from service.sinks.memory import MemorySink
from tests.conftest import RunData, make_run, stream_events
from tests.reference import expected_history, expected_summary

METRICS = {"STEP_INTERVAL": 3, "WANDB_INTERVAL": 4, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 5, "CONSOLE_INTERVAL": 7}
INTERVALS = {"step": 3, "wandb": 4, "lr": 2, "pipeline": 5}
TIMING = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "core/")


def _wire(events: list[Event], binary: bool) -> list[Event]:
    """``events`` through the wire: encoded, packed, unpacked and decoded as the service does."""
    body = pack_body({"events": [encode_event(e, binary) for e in events]}, binary)
    return decode_events(unpack_body(body, MSGPACK_TYPE if binary else "application/json")["events"])


def _blocked(chunk: list[Event]) -> list[Event]:
    """A delivery as the client's sender makes it: runs of records in blocks."""
    return [chunk[a] if b - a == 1 else block_of(chunk[a:b]) for a, b in block_spans(chunk)]


def _deliver(data: RunData, seed: int, blocks: bool, binary: bool = True) -> tuple[RunHost, MemorySink]:
    sink = MemorySink()
    host = RunHost([sink])
    host.create_run(data.spec("r", METRICS))
    streams = {r: stream_events(data, r) for r in range(data.world_size)}
    sessions = {r: host.open_session("r", r)["session"] for r in streams}
    sent, seq = dict.fromkeys(streams, 0), dict.fromkeys(streams, 0)
    rng = random.Random(seed)
    while any(sent[r] < len(streams[r]) for r in streams):
        r = rng.choice([r for r in streams if sent[r] < len(streams[r])])
        chunk = streams[r][sent[r]:sent[r] + rng.randint(1, 12)]
        events = _wire(_blocked(chunk) if blocks else chunk, binary)
        reply = host.ingest("r", sessions[r], seq[r], events)
        sent[r] += len(chunk)
        seq[r] += len(events)
        assert reply["acked_seq"] == seq[r]
    host.finish("r")
    return host, sink


def _history(host: RunHost) -> dict[str, list[tuple[int, float]]]:
    series = host.history("r", None, None, None)["series"]
    return {k: list(zip(v["steps"], v["values"], strict=True)) for k, v in series.items()
            if not any(t in k for t in TIMING)}


@pytest.mark.parametrize(("seed", "binary"), [(1, True), (2, True), (3, False)])
def test_blocks_give_the_state_records_one_by_one_give_and_equal_the_reference(seed: int, binary: bool) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=9, epochs=2)
    one_by_one, sink_a = _deliver(data, seed, blocks=False)
    blocked, sink_b = _deliver(data, seed, blocks=True, binary=binary)
    run_a, run_b = one_by_one.get("r"), blocked.get("r")
    assert run_a.state.to_dict(internal=True) == run_b.state.to_dict(internal=True)
    emitted = [[(e.step, e.group, e.values) for e in sink.of("r")] for sink in (sink_a, sink_b)]
    assert emitted[0] == emitted[1] and len(emitted[0]) > 20
    assert run_a.counters["records"] == run_b.counters["records"] and run_a.counters["samples"] == \
        run_b.counters["samples"]
    assert run_b.counters["events"] < run_a.counters["events"] == run_a.counters["records"]  # blocks were sent
    # and both equal the plain-loop reference (tests/reference.py), not merely each other
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert _history(blocked) == want
    want_summary = expected_summary(data.recs, data.tasks)
    want_summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert blocked.summary("r")["summary"] == want_summary


def test_blocked_deliveries_really_carry_blocks_with_scalars_among_rows() -> None:
    """Not a vacuous equivalence: the generated runs above give blocks of several rows with scalars."""
    data = make_run(1, world_size=1, steps_per_epoch=9, epochs=2)
    stream = stream_events(data, 0)
    delivered = _blocked(stream)
    blocks = [e for e in delivered if isinstance(e, BatchBlock)]
    assert len(blocks) >= 2 and all(b.rows >= 2 for b in blocks)
    assert any(b.scalars for b in blocks)
    assert record_count(delivered) == len(stream)
    assert [_plain(e) for e in logical_events(delivered)] == [_plain(e) for e in stream]


def _plain(event: Event) -> Any:
    """An event as plain values, labels spelled out per sample (a row keeps the block's vocabulary)."""
    if not isinstance(event, BatchEvent):
        return vars(event)
    out = {k: v for k, v in vars(event).items() if k not in ("targets", "topk", "subsets", "sample_losses")}
    out["arrays"] = {k: v.tolist() for k, v in (*event.targets.items(), *(("k" + t, a) for t, a in event.topk.items()))}
    out["subsets"] = {f: [labels[c] for c in codes.tolist()] for f, (labels, codes) in event.subsets.items()}
    out["sample_losses"] = None if event.sample_losses is None else event.sample_losses.tolist()
    return out


def _batch(rng: np.random.Generator, step: int, size: int, families: tuple[str, ...] = ("rarity",),
           loss: bool = True, phase: str = "train") -> BatchEvent:
    targets = {"a": rng.integers(0, 5, size), "b": rng.integers(0, 7, size)}
    topk = {"a": np.stack([rng.permutation(5)[:3] for _ in range(size)]),
            "b": np.stack([rng.permutation(7)[:3] for _ in range(size)])}
    subsets = {f: (["x", "y", "z"], rng.integers(0, 3, size)) for f in families}
    return BatchEvent(step=step, epoch=0, phase=phase, time=100.0 + step, targets=targets, topk=topk, sizes=[size],
                      losses=[float(rng.random())] if loss else None, task_losses={"a": [float(rng.random())]},
                      subsets=subsets)


def test_spans_cover_every_record_and_break_at_control_records_and_at_another_shape() -> None:
    rng = np.random.default_rng(0)
    lr = ScalarEvent("lr", 1, 0.0, {"g": 0.1})
    two = ("rarity", "mask")
    events: list[Event] = [lr, _batch(rng, 1, 4), _batch(rng, 2, 3), ScalarEvent("lr", 3, 0.0, {"g": 0.2}),
                           _batch(rng, 3, 2, families=two), _batch(rng, 4, 2, families=two),
                           EndEpochEvent("train", 0, 0.0), _batch(rng, 5, 2), CheckpointEvent("5"), _batch(rng, 6, 2),
                           _batch(rng, 7, 2)]
    spans = block_spans(events)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(events)))
    # the lr of step 3 is logged before the first batch of the other shape: it opens that block
    assert spans == [(0, 3), (3, 6), (6, 7), (7, 8), (8, 9), (9, 11)]
    block = block_of(events[3:6])
    assert block.rows == 2 and [at for at, _ in block.scalars] == [0]


def test_a_block_round_trips_through_both_encodings() -> None:
    rng = np.random.default_rng(1)
    records: list[Event] = [_batch(rng, 1, 3), ScalarEvent("custom", 1, 5.0, {"m": 1.5}, {"m": True}),
                            _batch(rng, 2, 5), _batch(rng, 2, 1)]
    block = block_of(records)
    for binary in (True, False):
        (again,) = _wire([block], binary)
        assert isinstance(again, BatchBlock)
        assert [_plain(e) for e in again.events()] == [_plain(e) for e in records]


def _good_block() -> dict[str, Any]:
    rng = np.random.default_rng(2)
    return encode_event(block_of([_batch(rng, 1, 3), ScalarEvent("lr", 2, 0.0, {"g": 0.1}), _batch(rng, 2, 2)]),
                        binary=False)


@pytest.mark.parametrize(("change", "named"), [
    (lambda b: b.update(phase=[0, 1]), "events[0].phase"),
    (lambda b: b.update(size=[3, 3]), "events[0].size"),
    (lambda b: b.update(size=[3, 0]), "events[0].size"),
    (lambda b: b.update(step=[1]), "events[0].epoch: expected 1 values"),
    (lambda b: b.update(epoch=[0, 0, 0]), "events[0].epoch: expected 2 values"),
    (lambda b: b.update(time=[1.0, -2.0]), "events[0].time"),
    (lambda b: b.update(loss=[0.5]), "events[0].loss"),
    (lambda b: b["task_losses"].update(a=[0.5, 0.1, 0.2]), "events[0].task_losses.a"),
    (lambda b: b["scalars"][0].update(at=3), "events[0].scalars[0].at"),
    (lambda b: b["scalars"][0].update(kind="end_epoch"), "events[0].scalars[0]"),
    (lambda b: b.update(phases=[]), "events[0].phases"),
    (lambda b: b["subsets"]["rarity"].update(codes=[0, 1, 2, 0]), "events[0].subsets.rarity"),
    (lambda b: b.update(step=[1, 2**70]), "events[0].step"),
])
def test_a_malformed_block_is_refused_naming_the_field(change: Any, named: str) -> None:
    block = _good_block()
    change(block)
    with pytest.raises(WireError, match=named.replace("[", r"\[").replace("]", r"\]")):
        decode_events([block])


def test_a_block_the_run_cannot_take_is_refused_whole_and_changes_nothing() -> None:
    host = RunHost()
    host.create_run({"run_id": "r", "world_size": 1, "total_steps": 10,
                     "tasks": [{"name": "a", "num_classes": 5}, {"name": "b", "num_classes": 7}]})
    session = host.open_session("r", 0)["session"]
    rng = np.random.default_rng(3)
    good = [_batch(rng, 1, 3), _batch(rng, 2, 2)]
    before = host.get("r").state.to_dict(internal=True)
    bad_class = block_of([good[0], _batch(rng, 2, 2)])
    bad_class.topk["b"][-1, 0] = 7
    late = block_of([_batch(rng, 3, 2), _batch(rng, 1, 2)])  # step 1 was completed by the batch of step 3
    for block, error, named in ((bad_class, InvalidInput, r"events\[0\]\.topk\.b: class index 7 outside"),
                                (late, StepAlreadyCompleted, r"events\[0\]\.record\[1\]\.step: step 1 was already")):
        with pytest.raises(error, match=named):
            host.ingest("r", session, 0, _wire([block], True))
        assert host.get("r").state.to_dict(internal=True) == before
    reply = host.ingest("r", session, 0, _wire([block_of(good)], True))
    assert reply == {"acked_seq": 1, "applied": 1, "ignored": 0}  # a block is one event of the sequence
    again = host.ingest("r", session, 0, _wire([block_of(good)], True))  # resent: acknowledged, ignored
    assert again["acked_seq"] == 1 and host.get("r").counters["duplicates"] == 1
    counters = host.get("r").counters
    assert (counters["events"], counters["records"], counters["samples"]) == (1, 2, 5)


def test_a_deliverys_batches_are_computed_together_with_scalars_between_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One vectorised pass a delivery (a block ends a group, to keep label codes in record order),
    not one a batch: a scalar after every batch once made recovery 1.5-1.9x slower."""
    from service.core.state import Accumulator

    calls: list[int] = []
    original = Accumulator.of_batches.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Accumulator], layout: Any, batches: Any) -> Any:
        calls.append(len(batches))
        return original(cls, layout, batches)

    monkeypatch.setattr(Accumulator, "of_batches", classmethod(counting))
    host = RunHost()
    host.create_run({"run_id": "r", "world_size": 1, "total_steps": 10,
                     "tasks": [{"name": "a", "num_classes": 5}, {"name": "b", "num_classes": 7}]})
    session = host.open_session("r", 0)["session"]
    rng = np.random.default_rng(5)
    events: list[Event] = []
    for step in range(1, 6):
        events += [_batch(rng, step, 3), ScalarEvent("lr", step, 0.0, {"g": 0.1})]
    block = block_of([_batch(rng, 6, 2), _batch(rng, 7, 2)])
    host.ingest("r", session, 0, [*events, block, _batch(rng, 8, 2), ScalarEvent("lr", 8, 0.0, {"g": 0.1}),
                                  _batch(rng, 9, 2)])
    assert calls == [5, 2]  # the five before the block together, the two after it together
    assert host.get("r").counters["records"] == 10 + 2 + 3


def _one_shape(batch: BatchEvent) -> BatchEvent:
    """``batch`` with the optional fields every other one has: all may go in one block."""
    return dataclasses.replace(
        batch, topk={t: v[:, :3] for t, v in batch.topk.items()}, losses=[0.5 + 0.1 * batch.step] * len(batch.sizes),
        task_losses={}, subsets={"rarity": batch.subsets["rarity"]}, sample_losses=None)


def test_a_block_across_epochs_and_phases_adds_to_each_epoch_what_its_rows_add_one_by_one() -> None:
    data = make_run(2, world_size=1, steps_per_epoch=4, epochs=2)
    rows = [_one_shape(e) for e in stream_events(data, 0) if isinstance(e, BatchEvent) and "rarity" in e.subsets]
    assert len({(r.phase, r.epoch) for r in rows}) >= 4 and len({block_key(r) for r in rows}) == 1
    spec = parse_spec(data.spec("r", METRICS))
    whole, apart = RunState(spec), RunState(spec)
    block = _wire([block_of(rows)], binary=True)
    whole.apply(0, block, whole.check(0, block))
    for row in rows:
        apart.apply(0, [row], apart.check(0, [row]))
    assert sorted(whole.epochs) == sorted(apart.epochs) == sorted({(r.phase, r.epoch) for r in rows})
    assert {k: a.to_dict() for k, a in whole.epochs.items()} == {k: a.to_dict() for k, a in apart.epochs.items()}
    assert whole.to_dict(internal=True) == apart.to_dict(internal=True)
