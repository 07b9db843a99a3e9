"""A rank's accepted position: ``apply`` takes the one ``check`` computed instead of advancing the
rank again record by record; the next check must see exactly the position the records give."""

from __future__ import annotations

import random

import pytest

from client._wire import BatchEvent, CheckpointEvent, CompleteEvent, Event, ScalarEvent, block_of, block_spans
from service.core.errors import StepAlreadyCompleted
from service.core.run_state import RunState
from service.core.spec import parse_spec
from tests.conftest import make_run, stream_events

METRICS = {"STEP_INTERVAL": 3, "WANDB_INTERVAL": 4, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 5}


def _blocked(chunk: list[Event]) -> list[Event]:
    return [chunk[a] if b - a == 1 else block_of(chunk[a:b]) for a, b in block_spans(chunk)]


def _with_markers(stream: list[Event], every: int) -> list[Event]:
    """The stream with a complete record and a checkpoint marker before the first train record past
    every ``every``-th step."""
    out: list[Event] = []
    marked = 0
    for event in stream:
        step = event.step if isinstance(event, ScalarEvent) or (
            isinstance(event, BatchEvent) and event.phase == "train") else None
        if step is not None and (step - 1) // every > marked:
            marked = (step - 1) // every
            out += [CompleteEvent(marked * every), CheckpointEvent(str(marked * every))]
        out.append(event)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_applying_with_the_checked_position_leaves_every_rank_where_record_by_record_would(seed: int) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=8, epochs=2)
    spec = parse_spec(data.spec("r", METRICS))
    taken, stepwise = RunState(spec), RunState(spec)
    streams = {r: _with_markers(stream_events(data, r), 5) for r in range(data.world_size)}
    assert any(isinstance(e, CheckpointEvent) for e in streams[0])
    sent = dict.fromkeys(streams, 0)
    rng = random.Random(seed)
    while any(sent[r] < len(s) for r, s in streams.items()):
        r = rng.choice([r for r, s in streams.items() if sent[r] < len(s)])
        chunk = streams[r][sent[r]:sent[r] + rng.randint(1, 12)]
        sent[r] += len(chunk)
        events = _blocked(chunk)
        checked = taken.check(r, events)
        assert stepwise.check(r, events).to_dict() == checked.to_dict()
        taken.apply(r, events, checked)
        stepwise.apply(r, events)
        assert [a.to_dict() for a in taken.accepted] == [a.to_dict() for a in stepwise.accepted]
    markers = [e.id for e in streams[0] if isinstance(e, CheckpointEvent)]
    assert [c for c, _ in taken.cuts.drain_taken()] == markers  # every marker cut the run on the way
    assert taken.to_dict(internal=True) == stepwise.to_dict(internal=True)


def test_the_next_check_sees_the_position_the_last_delivery_reached() -> None:
    data = make_run(3, world_size=1, steps_per_epoch=9, epochs=1)
    state = RunState(parse_spec(data.spec("r", METRICS)))
    train = [e for e in stream_events(data, 0) if isinstance(e, BatchEvent) and e.phase == "train"]
    first = [e for e in train if e.step <= 5]
    assert len({e.step for e in first}) == 5
    events = _blocked(first)
    assert any(e.records > 1 for e in events if hasattr(e, "records"))  # a block: rows advance the rank
    state.apply(0, events, state.check(0, events))
    assert state.accepted[0].completed == 4  # step 5 is completed only by a later step
    with pytest.raises(StepAlreadyCompleted):
        state.check(0, [next(e for e in train if e.step == 4)])
    state.check(0, [next(e for e in train if e.step == 5)])  # the last step may still get batches
