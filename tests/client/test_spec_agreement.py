"""What the client's constructor accepts, the service accepts (issue 14, finding 3).

One module (``client._rules``) holds the rules; these tests check the outcome on both
sides with the same specs: the constructor and a real service (uvicorn on 127.0.0.1)
refuse the same bad specs and accept the same edge cases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from client import MetricsClient, ServiceRejected
from client._rules import MAX_FAMILIES, MAX_LABELS_PER_FAMILY, MAX_TASKS
from tests.e2e.conftest import quiet_service

pytestmark = pytest.mark.e2e

Spec = dict[str, Any]


def base() -> Spec:
    return {"run_id": "agree", "world_size": 2, "total_steps": 10,
            "tasks": [{"name": "genus", "num_classes": 5, "null_index": 0}]}


def with_(**changes: Any) -> Callable[[], Spec]:
    return lambda: {**base(), **changes}


def tasks(count: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "num_classes": 3, "null_index": 0} for i in range(count)]


def families(count: int) -> dict[str, list[str]]:
    return {f"f{i}": ["a"] for i in range(count)}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


REFUSED = {
    "257 tasks": with_(tasks=tasks(MAX_TASKS + 1)),
    "run id with a trailing newline": with_(run_id="agree\n"),
    "run id ..": with_(run_id=".."),
    "run id of 129 characters": with_(run_id="r" * 129),
    "task name with a trailing newline": with_(tasks=[{"name": "genus\n", "num_classes": 5, "null_index": 0}]),
    "task name with a control character": with_(tasks=[{"name": "ge\x00nus", "num_classes": 5, "null_index": 0}]),
    "duplicate task names": with_(tasks=tasks(1) + tasks(1)),
    "null_index = num_classes": with_(tasks=[{"name": "genus", "num_classes": 5, "null_index": 5}]),
    "num_classes above int32": with_(tasks=[{"name": "genus", "num_classes": 2**31, "null_index": 0}]),
    "world size 65,537": with_(world_size=65_537),
    "world size 0": with_(world_size=0),
    "total_steps above 2**53": with_(total_steps=2**53 + 1),
    "the reserved null family": with_(subsets={"null": ["x"]}),
    "65 families": with_(subsets=families(MAX_FAMILIES + 1)),
    "4,097 labels": with_(subsets={"rarity": [f"l{i}" for i in range(MAX_LABELS_PER_FAMILY + 1)]}),
    "a label with a trailing newline": with_(subsets={"rarity": ["rare\n"]}),
    "NaN in the config": with_(config={"EXPERIMENT": {"lr": math.nan}}),
    "Infinity in the config": with_(config={"EXPERIMENT": {"lr": math.inf}}),
    "an int above int64 in the config": with_(config={"EXPERIMENT": {"seed": 2**63}}),
    "an int below int64 in the config": with_(config={"EXPERIMENT": {"seed": -(2**63) - 1}}),
    "a config nested 40 deep": with_(config={"EXPERIMENT": nested(40)}),
}

ACCEPTED = {
    "256 tasks": with_(tasks=tasks(MAX_TASKS)),
    "64 families": with_(subsets=families(MAX_FAMILIES)),
    "4,096 labels": with_(subsets={"rarity": [f"l{i}" for i in range(MAX_LABELS_PER_FAMILY)]}),
    "run id of 128 characters": with_(run_id="r" * 128),
    "int64 bounds in the config": with_(config={"EXPERIMENT": {"hi": 2**63 - 1, "lo": -(2**63), "f": 1e308}}),
}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with quiet_service(tmp_path_factory, "agree") as served:
        yield served


def construct(url: str, spec: Spec) -> MetricsClient:
    return MetricsClient(url, spec["run_id"], rank=0, world_size=spec["world_size"], tasks=spec["tasks"],
                         total_steps=spec["total_steps"], subsets=spec.get("subsets"), config=spec.get("config"),
                         open_timeout_s=10, flush_interval_s=0.01)


def post(url: str, spec: Spec) -> httpx.Response:
    body = json.dumps(spec)  # NaN and Infinity as the JSON extensions Python writes
    return httpx.post(f"{url}/v1/runs", content=body, headers={"Content-Type": "application/json"}, timeout=30)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_spec_the_constructor_refuses_the_service_refuses(url: str, case: str) -> None:
    spec = REFUSED[case]()
    with pytest.raises((ValueError, TypeError)):
        construct(url, spec)
    reply = post(url, spec)
    assert reply.status_code == 422, reply.text
    assert set(reply.json()) >= {"type", "detail"}
    runs = httpx.get(f"{url}/v1/runs", timeout=10).json()["runs"]
    assert spec["run_id"] not in [r["run_id"] for r in runs], "a refused spec changes nothing"


def test_a_config_the_service_refuses_raises_in_the_constructor(url: str) -> None:
    # the METRICS section is the service's to interpret: with the service reachable, the
    # constructor still raises, naming the key (a typo must not silently disable logging)
    with pytest.raises(ServiceRejected, match="STEP_INTERVALL") as caught:
        construct(url, with_(config={"METRICS": {"STEP_INTERVALL": 5}})())
    assert caught.value.status_code == 422


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_a_spec_the_constructor_accepts_the_service_accepts(url: str, case: str) -> None:
    spec = ACCEPTED[case]()
    with construct(url, spec) as client:  # creates the run over HTTP before it returns
        assert httpx.get(f"{url}/v1/runs/{spec['run_id']}", timeout=10).status_code == 200
        client.log_lr(1, {"backbone": 0.1})
        assert client.flush(10)
    httpx.delete(f"{url}/v1/runs/{spec['run_id']}", timeout=10).raise_for_status()
