"""A trainer checkpoints, crashes and resumes through real clients: metrics equal an uninterrupted run."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from tests.conftest import make_run
from tests.e2e.conftest import LiveServer, ServiceProcess, free_port, live_server  # noqa: F401
from tests.e2e.test_end_to_end import METRICS, check_against_reference
from tests.e2e.trainer import Trainer, split_at

pytestmark = pytest.mark.e2e
K, M = 8, 4  # checkpoint at step 8 (epoch 1 of 6-step epochs), crash around step 12


def _checkpoint_all(trainers: list[Trainer], late: Trainer, late_items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """state_dict() on every rank; ``late`` logs its last steps while the others already wait."""
    results: dict[int, dict[str, Any]] = {}
    waiting = [threading.Thread(target=lambda t=t: results.__setitem__(t.rank, t.client.state_dict(timeout_s=30)))
               for t in trainers if t is not late]
    for thread in waiting:
        thread.start()
    late.play(late_items)
    results[late.rank] = late.client.state_dict(timeout_s=30)
    for thread in waiting:
        thread.join(40)
    return [results[r] for r in sorted(results)]


def _run_until_crash(url: str, data: Any) -> dict[str, Any]:
    trainers = [Trainer(url, data, r, METRICS, retry_max_s=0.2) for r in range(3)]
    parts = [split_at(t.stream(), K) for t in trainers]
    for trainer, (head, _) in zip(trainers[:2], parts, strict=False):
        trainer.play(head)
    states = _checkpoint_all(trainers, trainers[2], parts[2][0])
    assert all(s["snapshot"] == states[0]["snapshot"] for s in states)
    assert states[0]["snapshot"]["cut"]["watermark"] == K
    for trainer, (_, rest) in zip(trainers, parts, strict=True):
        trainer.play(split_at(rest, K + M)[0])  # goes on past the checkpoint ...
    for trainer in trainers[:2]:
        trainer.client.flush(10)  # ... and then the job dies; rank 2's process hangs on
    return {"state": pickle.loads(pickle.dumps(states[0])), "hanging": trainers[2]}


def _resume(url: str, data: Any, state: dict[str, Any], order: list[int], hanging: Trainer | None) -> None:
    resumed: dict[int, Trainer] = {}
    for i, r in enumerate(order):
        resumed[r] = Trainer(url, data, r, METRICS, retry_max_s=0.2)
        resumed[r].client.load_state_dict(state, timeout_s=30)
        rest = split_at(resumed[r].stream(), K)[1]
        resumed[r].play(split_at(rest, K + i)[0])  # early ranks already log while others still load
        if hanging is not None and i == 0:
            hanging.play(split_at(split_at(hanging.stream(), K + M)[1], K + M + 2)[0])  # the zombie keeps logging
    for r, trainer in resumed.items():
        trainer.play(split_at(split_at(trainer.stream(), K)[1], K + order.index(r))[1])
    for trainer in resumed.values():
        assert trainer.client.flush(30)
        trainer.client.close()


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_resume_equals_uninterrupted_run(live_server: LiveServer, order: list[int]) -> None:
    data = make_run(41, world_size=3, steps_per_epoch=6, epochs=3)
    crashed = _run_until_crash(live_server.url, data)
    _resume(live_server.url, data, crashed["state"], order, crashed["hanging"])
    check_against_reference(live_server.url, "e2e", data)
    crashed["hanging"].client.close(1)


def test_resume_twice_from_one_checkpoint(live_server: LiveServer) -> None:
    data = make_run(42, world_size=3, steps_per_epoch=6, epochs=3)
    crashed = _run_until_crash(live_server.url, data)
    crashed["hanging"].client.close(1)
    first = [Trainer(live_server.url, data, r, METRICS, retry_max_s=0.2) for r in range(3)]
    for trainer in first:
        trainer.client.load_state_dict(crashed["state"], timeout_s=30)
        trainer.play(split_at(split_at(trainer.stream(), K)[1], K + 3)[0])
        trainer.client.flush(10)
    _resume(live_server.url, data, crashed["state"], [1, 0, 2], None)  # the first resume died too
    check_against_reference(live_server.url, "e2e", data)
    for trainer in first:
        trainer.client.close(1)


def test_resume_on_a_service_with_an_empty_data_dir(live_server: LiveServer, tmp_path: Any) -> None:
    data = make_run(43, world_size=3, steps_per_epoch=6, epochs=3)
    crashed = _run_until_crash(live_server.url, data)
    crashed["hanging"].client.close(1)
    other = ServiceProcess(tmp_path / "empty", free_port()).start()
    try:
        _resume(other.url, data, crashed["state"], [2, 1, 0], None)
        check_against_reference(other.url, "e2e", data)
    finally:
        other.terminate()
