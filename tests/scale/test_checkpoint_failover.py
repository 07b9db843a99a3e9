"""A checkpoint whose markers straddle a failover still completes, and a resumed job restores it exactly."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.test_end_to_end import METRICS
from tests.e2e.trainer import Trainer, split_at
from tests.scale.conftest import Cluster, check_reference, finish_and_read, rotated, until

pytestmark = pytest.mark.e2e
RUN = "e2e"
K = 8  # the checkpoint's step


def _trainer(cluster: Cluster, data: Any, rank: int) -> Trainer:
    return Trainer(rotated(cluster.urls, 0), data, rank, METRICS, run_id=RUN, retry_initial_s=0.05,
                   retry_max_s=0.3, request_timeout_s=2.0)


def test_a_checkpoint_straddling_a_failover_completes_and_restores(cluster: Cluster) -> None:
    cluster.start(2)
    data = make_run(73, world_size=2, steps_per_epoch=6, epochs=3)
    trainers = [_trainer(cluster, data, r) for r in range(2)]
    parts = [split_at(t.stream(), K) for t in trainers]
    for trainer, (head, _) in zip(trainers, parts, strict=True):
        trainer.play(head)
        assert trainer.client.flush(30)
    owner = cluster.owner(RUN)
    assert owner is cluster.replicas[0]
    states: dict[int, dict[str, Any]] = {}
    waiting = threading.Thread(target=lambda: states.__setitem__(0, trainers[0].client.state_dict(timeout_s=60)))
    waiting.start()  # rank 0's marker reaches the owner ...
    until(lambda: _missing(owner.url) == [1], 30, "rank 0's marker on the owner")
    owner.kill9()  # ... which dies before rank 1's marker comes
    states[1] = trainers[1].client.state_dict(timeout_s=60)
    waiting.join(70)
    assert cluster.owner(RUN) is cluster.replicas[1]
    assert states[0]["snapshot"] == states[1]["snapshot"]
    assert states[0]["snapshot"]["cut"]["watermark"] == K
    for trainer, (_, rest) in zip(trainers, parts, strict=True):
        trainer.play(split_at(rest, K + 3)[0])  # the job goes on past the checkpoint, then dies
        trainer.client.flush(10)
        trainer.client.close()
    state = pickle.loads(pickle.dumps(states[0]))
    resumed = [_trainer(cluster, data, r) for r in range(2)]
    for trainer in resumed:
        trainer.client.load_state_dict(state, timeout_s=30)
    for trainer in resumed:
        trainer.play(split_at(trainer.stream(), K)[1])
    for trainer in resumed:
        assert trainer.client.flush(30), trainer.client.stats()
        trainer.client.close()
    check_reference(finish_and_read(cluster.urls[1:], RUN), data)



def _missing(url: str) -> list[int] | None:
    """The ranks whose marker the checkpoint still waits for (None: the checkpoint is unknown or taken)."""
    reply = httpx.get(f"{url}/v1/runs/{RUN}/checkpoints/{K}", timeout=10)
    return reply.json().get("missing_ranks") if reply.status_code == 408 else None
