"""PostgreSQL cut off (through a proxy the test controls) mid-run: replicas not ready, writes 503, nothing lost."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.test_end_to_end import METRICS
from tests.e2e.trainer import Trainer, play_all, split_at
from tests.scale.conftest import Cluster, check_reference, finish_and_read, until
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
RUN = "e2e"


def _ready(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).status_code


def test_a_database_outage_makes_replicas_unready_refuses_writes_and_loses_nothing(
        proxied_cluster: tuple[Cluster, TcpProxy]) -> None:
    cluster, proxy = proxied_cluster
    cluster.start(2)
    data = make_run(74, world_size=2, steps_per_epoch=8, epochs=2)
    trainers = [Trainer(cluster.urls, data, r, METRICS, run_id=RUN, retry_initial_s=0.05, retry_max_s=0.3,
                        request_timeout_s=2.0) for r in range(2)]
    parts = [split_at(t.stream(), 6) for t in trainers]
    for trainer, (head, _) in zip(trainers, parts, strict=True):
        trainer.play(head)
        assert trainer.client.flush(30)
    proxy.cut()
    until(lambda: all(_ready(url) == 503 for url in cluster.urls), 30, "every replica not ready")
    write = httpx.post(f"{cluster.urls[0]}/v1/runs/{RUN}/sessions", json={"rank": 0}, timeout=10)
    assert write.status_code == 503, write.text
    play_all(trainers, [rest for _, rest in parts])
    assert not trainers[0].client.flush(0.5)  # buffered: nothing can be acknowledged
    assert trainers[0].client.stats()["retries"] > 0
    proxy.restore()
    until(lambda: all(_ready(url) == 200 for url in cluster.urls), 30, "every replica ready again")
    for trainer in trainers:
        assert trainer.client.flush(60), trainer.client.stats()
        assert sum(trainer.client.stats()["dropped"].values()) == 0
        trainer.client.close()
    acked = sum(t.client.stats()["acked_events"] for t in trainers)
    assert httpx.get(f"{cluster.urls[1]}/v1/runs/{RUN}", timeout=30).json()["counters"]["events"] == acked
    check_reference(finish_and_read(cluster.urls, RUN), data)
