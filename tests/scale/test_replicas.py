"""Three replicas on one PostgreSQL database: runs spread across them, each exact, reads the same everywhere."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.test_end_to_end import METRICS
from tests.e2e.trainer import Trainer, play_all
from tests.scale.conftest import Cluster, check_reference, finish_and_read, rotated

pytestmark = pytest.mark.e2e


def test_runs_spread_over_three_replicas_each_exact_and_read_alike_everywhere(cluster: Cluster) -> None:
    cluster.start(3)
    runs = {f"run-{i}": make_run(60 + i, world_size=2, steps_per_epoch=6, epochs=2) for i in range(3)}
    trainers = [Trainer(rotated(cluster.urls, i), data, rank, METRICS, run_id=run_id, retry_max_s=0.2)
                for i, (run_id, data) in enumerate(runs.items()) for rank in range(2)]
    play_all(trainers)
    for trainer in trainers:
        assert trainer.client.flush(30), trainer.client.stats()
        trainer.client.close()
    owners = {run_id: cluster.owner(run_id) for run_id in runs}
    assert [owners[f"run-{i}"] for i in range(3)] == cluster.replicas, "each run stays on its first replica"
    for run_id, data in runs.items():
        check_reference(finish_and_read(rotated(cluster.urls, 1), run_id), data)
    # a write sent to a replica that does not own the run is sent to the owner
    owner, other = owners["run-0"], cluster.replicas[1]
    assert owner is not None
    reply = httpx.post(f"{other.url}/v1/runs/run-0/sessions?x=1", json={"rank": 0}, timeout=10)
    assert reply.status_code == 307 and reply.headers["location"] == f"{owner.url}/v1/runs/run-0/sessions?x=1"
    assert reply.json()["type"] == "not_owner"
    # deleted through its owner (a replica that does not own it redirects), then gone everywhere
    assert httpx.delete(f"{other.url}/v1/runs/run-0", timeout=10).status_code == 307
    assert httpx.delete(f"{other.url}/v1/runs/run-0", timeout=30, follow_redirects=True).status_code == 200
    for url in cluster.urls:
        assert httpx.get(f"{url}/v1/runs/run-0/metrics", timeout=10).status_code == 404
        assert [r["run_id"] for r in httpx.get(f"{url}/v1/runs", timeout=10).json()["runs"]] == ["run-1", "run-2"]
