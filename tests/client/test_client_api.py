"""The public surface: exports, the error tree, lifecycle, auth, fork safety."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable

import httpx
import pytest

import client
from client import (
    CheckpointTimeout,
    ClientClosed,
    ClientError,
    InvalidRecord,
    InvalidStateDict,
    InvalidType,
    MetricsClient,
    ServiceRejected,
    ServiceUnavailable,
    SessionFenced,
    StepAlreadyCompleted,
)
from client._transport import TOKEN_ENV
from client._wire import ScalarEvent
from tests.client.client_fakes import TASKS, FakeService

Make = Callable[..., MetricsClient]


def test_public_names() -> None:
    assert {"MetricsClient", "ClientError", "CheckpointTimeout", "ServiceRejected"} <= set(
        client.__all__
    )
    for name in client.__all__:
        assert getattr(client, name) is not None
    assert all(not name.startswith("_") for name in client.__all__)


def test_the_error_tree() -> None:
    for misuse in (InvalidRecord, StepAlreadyCompleted, InvalidStateDict, ClientClosed):
        assert issubclass(misuse, ClientError) and issubclass(misuse, ValueError)
    assert issubclass(InvalidType, ClientError) and issubclass(InvalidType, TypeError)
    assert issubclass(SessionFenced, ServiceRejected)
    for failure in (ServiceUnavailable, ServiceRejected, CheckpointTimeout):
        assert issubclass(failure, ClientError) and not issubclass(failure, ValueError | TypeError)
    assert CheckpointTimeout("late", "7", [1, 3]).missing_ranks == [1, 3]


def test_context_manager_flushes_and_closes(service: FakeService, make_client: Make) -> None:
    with make_client() as mc:
        mc.log_lr(2, {"backbone": 0.1})
    assert [e.kind for e in service.events()] == ["lr", "complete"]
    assert mc.stats()["pending"] == 0
    with pytest.raises(ClientClosed):
        mc.log_lr(3, {"backbone": 0.1})
    mc.close()  # idempotent
    assert mc.flush(0.1)


def test_the_constructor_does_not_wait_for_the_service(
    service: FakeService, make_client: Make
) -> None:
    service.down = True
    mc = make_client(retry_initial_s=10.0, retry_max_s=10.0)
    assert mc.stats()["queued"] == 0 and "exp" not in service.runs
    mc.close(timeout_s=0.01)


@pytest.mark.parametrize("from_env", [False, True])
def test_the_bearer_token_is_sent(monkeypatch: pytest.MonkeyPatch, from_env: bool) -> None:
    seen: list[str | None] = []
    fake = FakeService()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return fake.handle(request)

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    with MetricsClient(
        "http://metrics.test",
        "exp",
        0,
        1,
        TASKS,
        10,
        token=None if from_env else "secret",
        transport=httpx.MockTransport(handler),
        flush_interval_s=0.01,
    ) as mc:
        mc.log_lr(0, {"backbone": 0.1})
        assert mc.flush(5)
    assert set(seen) == {"Bearer from-env" if from_env else "Bearer secret"}


def test_a_refused_run_spec_raises_in_the_constructor(service: FakeService, make_client: Make) -> None:
    # issue 14, finding 2: a 409 used to drop every record while flush() said True
    service.runs["exp"] = {"run_id": "exp", "world_size": 7}
    with pytest.raises(ServiceRejected) as caught:
        make_client()
    assert caught.value.error_type == "run_conflict" and caught.value.status_code == 409


def test_a_refusal_after_an_unreachable_start_makes_flush_false_and_is_logged_once(
    service: FakeService, make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    service.down = True
    mc = make_client(open_timeout_s=5)  # returns: the service cannot be reached, records are buffered
    mc.log_lr(0, {"backbone": 0.1})
    mc.log_lr(1, {"backbone": 0.1})
    service.runs["exp"] = {"run_id": "exp", "world_size": 7}
    with caplog.at_level(logging.ERROR, logger="client"):
        service.down = False
        assert mc.flush(5) is False
        assert mc.flush(5) is False
    assert mc.stats()["dropped"]["rejected"] >= 2
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "run_conflict" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    with pytest.raises(ServiceRejected) as caught:
        mc.state_dict(timeout_s=1)
    assert caught.value.error_type == "run_conflict" and caught.value.status_code == 409


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_send_and_the_parent_goes_on(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    mc.log_lr(0, {"backbone": 0.1})
    assert mc.flush(5)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: report and leave without running any test teardown
        try:
            posts = service.events_posts
            mc.log_lr(1, {"backbone": 0.2})
            report = {
                "flushed": mc.flush(1),
                "stats": mc.stats(),
                "posts": service.events_posts - posts,
            }
            mc.close(timeout_s=1)
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        report = json.loads(reader.read() or "{}")
    os.waitpid(pid, 0)
    assert report["flushed"] is False and report["posts"] == 0  # its records are dropped: flush() says so
    assert report["stats"]["dropped"]["forked"] == 2  # the record and the flush's completion mark
    mc.log_lr(1, {"backbone": 0.3})
    assert mc.flush(5)
    assert [e.values["backbone"] for e in service.events(ScalarEvent)] == [0.1, 0.3]


def test_an_open_client_is_flushed_at_interpreter_exit(tmp_path: os.PathLike[str]) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = """
import atexit
services = []
atexit.register(lambda: print([e.kind for e in services[0].events()]))  # runs after client's
from tests.client.client_fakes import FakeService, TASKS
from client import MetricsClient
services.append(FakeService())
mc = MetricsClient("http://metrics.test", "exp", 0, 1, TASKS, 10,
                   transport=services[0].transport(), flush_interval_s=60.0)
mc.log_lr(4, {"backbone": 0.5})
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "['lr', 'complete']"
