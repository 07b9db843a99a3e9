"""The owner of a run dies or stalls mid-run: another replica takes the run over; nothing lost or doubled."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.test_end_to_end import METRICS
from tests.e2e.trainer import Trainer, play_all, split_at
from tests.scale.conftest import TTL_S, Cluster, check_reference, finish_and_read, rotated, until

pytestmark = pytest.mark.e2e
RUN = "e2e"


def _trainers(cluster: Cluster, data: Any, first: int) -> list[Trainer]:
    return [Trainer(rotated(cluster.urls, first), data, rank, METRICS, run_id=RUN, retry_initial_s=0.05,
                    retry_max_s=0.3, request_timeout_s=2.0, max_batch_events=5) for rank in range(data.world_size)]


def _close_exact(trainers: list[Trainer], cluster: Cluster, data: Any) -> None:
    """Every record acknowledged once: none dropped, the run's event count equals the acks, values exact."""
    for trainer in trainers:
        assert trainer.client.flush(60), trainer.client.stats()
        assert sum(trainer.client.stats()["dropped"].values()) == 0
        trainer.client.close()
        assert trainer.client.stats()["lost_after_ack"] == 0, cluster.log()
    acked = sum(t.client.stats()["acked_events"] for t in trainers)
    live = [r.url for r in cluster.replicas if r.proc is not None and r.proc.poll() is None]
    info = httpx.get(f"{live[0]}/v1/runs/{RUN}", timeout=30).json()
    assert info["counters"]["events"] == acked
    check_reference(finish_and_read(live, RUN), data)


def test_kill9_of_the_owner_mid_run_another_replica_takes_over(cluster: Cluster) -> None:
    cluster.start(3)
    data = make_run(71, world_size=2, steps_per_epoch=10, epochs=2)
    trainers = _trainers(cluster, data, first=0)
    streams = [t.stream() for t in trainers]
    cuts = [(len(split_at(s, 6)[0]), len(split_at(s, 14)[0])) for s in streams]
    play_all(trainers, [s[:a] for s, (a, _) in zip(streams, cuts, strict=True)])
    assert all(t.client.flush(30) for t in trainers)
    owner = cluster.owner(RUN)
    assert owner is cluster.replicas[0]
    play_all(trainers, [s[a:b] for s, (a, b) in zip(streams, cuts, strict=True)])  # queued or in flight ...
    killed = time.monotonic()
    owner.kill9()  # ... while the owner dies
    successor = until(lambda: (o := cluster.owner(RUN)) is not None and o is not owner and o,
                      TTL_S + 15, "a takeover")
    took_s = time.monotonic() - killed
    assert took_s < TTL_S + 15
    play_all(trainers, [s[b:] for s, (_, b) in zip(streams, cuts, strict=True)])
    _close_exact(trainers, cluster, data)
    assert cluster.owner(RUN) is successor and cluster.token(RUN) == 2


def test_a_stalled_owner_wakes_up_fenced_and_its_late_write_is_refused(cluster: Cluster) -> None:
    cluster.start(2)
    data = make_run(72, world_size=2, steps_per_epoch=8, epochs=2)
    trainers = _trainers(cluster, data, first=0)
    streams = [t.stream() for t in trainers]
    half = [len(split_at(s, 7)[0]) for s in streams]
    play_all(trainers, [s[:h] for s, h in zip(streams, half, strict=True)])
    assert all(t.client.flush(30) for t in trainers)
    stalled, successor = cluster.replicas
    assert cluster.owner(RUN) is stalled and stalled.proc is not None
    stalled.proc.send_signal(signal.SIGSTOP)
    late: dict[str, httpx.Response] = {}
    # a session opened on the stalled owner: applied late, it would fence rank 0's live session
    sender = threading.Thread(target=lambda: late.setdefault("reply", httpx.post(
        f"{stalled.url}/v1/runs/{RUN}/sessions", json={"rank": 0}, timeout=60)))
    sender.start()
    play_all(trainers, [s[h:] for s, h in zip(streams, half, strict=True)])  # the clients move on to r1
    until(lambda: cluster.owner(RUN) is successor, TTL_S + 15, "the takeover")
    assert all(t.client.flush(30) for t in trainers)
    stalled.proc.send_signal(signal.SIGCONT)
    sender.join(60)
    reply = late["reply"]
    assert reply.status_code == 307, reply.text
    assert reply.headers["location"] == f"{successor.url}/v1/runs/{RUN}/sessions"
    assert cluster.token(RUN) == 2
    _close_exact(trainers, cluster, data)

