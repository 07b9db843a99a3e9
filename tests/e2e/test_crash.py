"""The service process is killed with SIGKILL mid-run and restarted: nothing lost, nothing doubled."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.conftest import ServiceProcess, free_port
from tests.e2e.test_end_to_end import METRICS, check_against_reference
from tests.e2e.trainer import Trainer, play_all, split_at

pytestmark = pytest.mark.e2e


def test_kill9_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    data = make_run(31, world_size=2, steps_per_epoch=10, epochs=2)
    service = ServiceProcess(tmp_path / "data", free_port(), env={"LINNAEUS_METRICS_SNAPSHOT_EVERY_EVENTS": "25"})
    service.start()
    trainers = [Trainer(service.url, data, r, METRICS, retry_initial_s=0.02, retry_max_s=0.2, max_batch_events=5)
                for r in range(2)]
    streams = [t.stream() for t in trainers]
    thirds = [(len(split_at(s, 6)[0]), len(split_at(s, 14)[0])) for s in streams]  # at step boundaries
    for trainer, stream, (a, _) in zip(trainers, streams, thirds, strict=True):
        trainer.play(stream[:a])
    assert all(t.client.flush(30) for t in trainers)
    before = httpx.get(f"{service.url}/v1/runs/e2e").json()["counters"]["events"]
    assert before > 0
    # more records are queued or in flight while the service dies
    for trainer, stream, (a, b) in zip(trainers, streams, thirds, strict=True):
        trainer.play(stream[a:b])
    service.kill9()
    assert not trainers[0].client.flush(0.3)  # nothing can be acknowledged while it is down
    service.start()  # same data dir, same port, right after the kill
    play_all(trainers, [s[b:] for s, (_, b) in zip(streams, thirds, strict=True)])
    for trainer in trainers:
        assert trainer.client.flush(60), trainer.client.stats()
        assert sum(trainer.client.stats()["dropped"].values()) == 0
        trainer.client.close()
    acked = sum(t.client.stats()["acked_events"] for t in trainers)
    assert httpx.get(f"{service.url}/v1/runs/e2e").json()["counters"]["events"] == acked
    check_against_reference(service.url, "e2e", data)
    assert service.terminate() in (0, -15)

