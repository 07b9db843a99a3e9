"""Never silent (DESIGN §7, issue 14): against a real service (uvicorn on 127.0.0.1).

A refused run raises in the constructor; ``flush()`` is True only when everything is
durable; events the service ignored count as lost; ranks that never joined are visible
and warned about; without a METRICS section step metrics still appear.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import MetricsClient, ServiceRejected
from service.settings import Settings
from tests.e2e.conftest import live_service, quiet_service

pytestmark = pytest.mark.e2e
TASKS = {"genus": 5, "species": 10}
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with quiet_service(tmp_path_factory, "silent") as served:
        yield served


def client(url: str, run_id: str, **kwargs: object) -> MetricsClient:
    options: dict[str, object] = {"rank": 0, "world_size": 1, "tasks": TASKS, "total_steps": 100,
                                  "flush_interval_s": 0.01, "retry_initial_s": 0.01, "retry_max_s": 0.05}
    options.update(kwargs)
    return MetricsClient(url, run_id, **options)  # type: ignore[arg-type]


def batch(rng: np.random.Generator, size: int = 4) -> dict[str, object]:
    return {"targets": {t: rng.integers(0, n, size) for t, n in TASKS.items()},
            "logits": {t: rng.normal(size=(size, n)) for t, n in TASKS.items()}}


def test_a_resume_with_another_total_steps_raises_a_conflict(url: str) -> None:
    with client(url, "conflict", total_steps=100) as first:
        first.log_lr(1, {"backbone": 0.1})
        assert first.flush(10)
    with pytest.raises(ServiceRejected) as caught:
        client(url, "conflict", total_steps=200)  # e.g. resumed with more epochs
    assert caught.value.status_code == 409 and caught.value.error_type == "run_conflict"


def test_a_wrong_url_path_raises(url: str) -> None:
    with pytest.raises(ServiceRejected) as caught:
        client(f"{url}/metrics-api", "wrong-path")
    assert caught.value.status_code == 404


def test_auth_refusals_raise(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", wandb_enabled=False, console_enabled=False,
                        auth_tokens=[TOKEN])
    with live_service(settings) as (served, _):
        with pytest.raises(ServiceRejected) as missing:
            client(served, "auth", token=None)
        with pytest.raises(ServiceRejected) as wrong:
            client(served, "auth", token="not-the-token")
        with client(served, "auth", token=TOKEN) as good:
            good.log_lr(1, {"backbone": 0.1})
            assert good.flush(10)
    assert (missing.value.status_code, wrong.value.status_code) == (401, 403)


def test_an_unreachable_service_does_not_raise_and_flush_says_false(tmp_path: Path) -> None:
    mc = client("http://127.0.0.1:9", "unreachable", open_timeout_s=5)  # port 9 (discard): refused
    mc.log_lr(1, {"backbone": 0.1})
    assert mc.flush(0.2) is False
    assert mc.stats()["pending"] >= 1
    mc.close(timeout_s=0)


def test_events_the_service_ignores_make_flush_false(url: str, caplog: pytest.LogCaptureFixture) -> None:
    # finding 7: a rank that never loads the restored snapshot has its events acked and ignored
    rng = np.random.default_rng(7)
    ranks = [client(url, "ignored", rank=r, world_size=2) for r in range(2)]
    for mc in ranks:
        mc.log_batch(1, epoch=0, loss=0.5, **batch(rng))
    checkpoint = _state_dicts(ranks)
    ranks[0].close()
    resumed = client(url, "ignored", rank=0, world_size=2)
    resumed.load_state_dict(checkpoint)  # rank 1 goes on without loading it
    with caplog.at_level(logging.ERROR, logger="client"):
        ranks[1].log_batch(2, epoch=0, loss=0.5, **batch(rng))
        assert ranks[1].flush(10) is False
    stats = ranks[1].stats()
    assert stats["dropped"]["ignored"] >= 1 and stats["pending"] == 0
    assert [r.levelno for r in caplog.records if r.name.startswith("client") and "ignored" in r.getMessage()] == [
        logging.ERROR]
    counters = httpx.get(f"{url}/v1/runs/ignored", timeout=10).json()["counters"]
    assert counters["ignored"] >= 1
    resumed.log_batch(2, epoch=0, loss=0.5, **batch(rng))
    assert resumed.flush(10), "the rank that loaded the snapshot is counted"
    for mc in (resumed, ranks[1]):
        mc.close()


def _state_dicts(ranks: list[MetricsClient]) -> dict[str, object]:
    import threading

    out: list[dict[str, object]] = []
    other = threading.Thread(target=lambda: out.append(ranks[1].state_dict(timeout_s=20)))
    other.start()
    mine = ranks[0].state_dict(timeout_s=20)
    other.join(25)
    assert out and out[0]["snapshot"] == mine["snapshot"]
    return mine


def test_ranks_that_never_joined_are_shown_and_warned_about(url: str, caplog: pytest.LogCaptureFixture) -> None:
    # finding 4: ranks that compute their run id per process split into two half-runs
    rng = np.random.default_rng(4)
    with caplog.at_level(logging.WARNING, logger="client"):
        first = client(url, "split-a", rank=0, world_size=2, missing_ranks_grace_s=0)
        second = client(url, "split-b", rank=1, world_size=2, missing_ranks_grace_s=0)
        for step, mc in ((1, first), (1, second)):
            mc.log_batch(step, epoch=0, loss=0.5, **batch(rng))
            assert mc.flush(10)  # delivered: the loss is not in the records but in the split
    info = httpx.get(f"{url}/v1/runs/split-a", timeout=10).json()
    assert info["missing_ranks"] == [1] and "never opened a session" in info["note"]
    assert first.stats()["missing_ranks"] == [1] and second.stats()["missing_ranks"] == [0]
    warnings = [r.getMessage() for r in caplog.records if "never opened a session" in r.getMessage()]
    assert len(warnings) == 2 and "[1]" in warnings[0] and "[0]" in warnings[1]
    for mc in (first, second):
        mc.close()


def test_a_full_run_shows_no_missing_ranks_and_warns_nothing(url: str, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(5)
    with caplog.at_level(logging.WARNING, logger="client"):
        ranks = [client(url, "whole", rank=r, world_size=2, missing_ranks_grace_s=0) for r in range(2)]
        for mc in ranks:
            mc.log_batch(1, epoch=0, loss=0.5, **batch(rng))
            assert mc.flush(10)
            mc.close()
    assert httpx.get(f"{url}/v1/runs/whole", timeout=10).json()["missing_ranks"] == []
    assert not [r for r in caplog.records if "never opened" in r.getMessage()]


def test_the_docstring_client_without_config_gets_step_metrics_and_finishes(url: str) -> None:
    # finding 1: no config= meant no step, LR or wandb output at all
    rng = np.random.default_rng(1)
    with client(url, "no-config", total_steps=200) as mc:
        for step in range(1, 201):
            mc.log_batch(step, epoch=0, loss=0.25, **batch(rng))
            if step % 50 == 0:
                mc.log_lr(step, {"backbone": 0.01})
        mc.end_epoch("train", 0)
        reply = mc.finish(timeout_s=30)
    info = httpx.get(f"{url}/v1/runs/no-config", timeout=10).json()
    assert info["schedule_source"] == "default" and info["schedule"]["step"] == 100
    history = httpx.get(f"{url}/v1/runs/no-config/history", params={"keys": "train/loss,train/lr/backbone"},
                        timeout=10).json()["series"]
    assert history["train/loss"]["steps"] == [100, 200] and history["train/loss"]["values"] == [0.25, 0.25]
    assert history["train/lr/backbone"]["steps"] == [200]
    assert reply["summary"]["final_train_loss"] == 0.25
    assert info["status"] == "finished"
