"""Fakes and builders shared by the sink tests."""

from __future__ import annotations

import threading
from typing import Any

from service.core.emission import Emission, MetricId
from service.core.naming import core_metric, scalar_metric, window_metric


def spec(run_id: str, **experiment: Any) -> dict[str, Any]:
    """A run spec as the API hands it to sinks."""
    return {
        "run_id": run_id,
        "world_size": 2,
        "total_steps": 1000,
        "tasks": [
            {"name": "taxa_L10", "num_classes": 10, "null_index": 0},
            {"name": "taxa_L20", "num_classes": 5, "null_index": 0},
        ],
        "subsets": {"rarity": ["rare", "common"]},
        "config": {"METRICS": {"WANDB_INTERVAL": 20}, "EXPERIMENT": experiment},
    }


def em(run_id: str, step: int, group: str, values: dict[str, Any], carried: dict[str, Any] | None = None) -> Emission:
    """An emission as the core builds it: every key with its identity (from the naming functions)."""
    carried = carried or {}
    metrics = {key: identify(key) for key in {**carried, **values}}
    return Emission(run_id=run_id, step=step, group=group, values=values, metrics=metrics, carried=carried)


def identify(key: str) -> MetricId:
    """The identity the core gives ``key`` (test keys only: the core never parses keys)."""
    head, _, rest = key.partition("/")
    if key.startswith("final_"):
        return MetricId(key, "final", key[len("final_"):], direction="min" if "loss" in key else "max")
    if head == "core":
        name, _, task = rest.partition("/")
        return core_metric(name, task or None)
    if head in ("pipeline", "gradnorm", "custom"):
        return scalar_metric(head, rest)
    if rest.startswith("lr/"):
        return scalar_metric("lr", rest[3:])
    family = label = None
    if rest.startswith("subset/"):
        family, label, rest = rest[len("subset/"):].split("/", 2)
    window = "step" if head == "train" else "epoch"
    for prefix, name in (("step_avg_", "step_avg"), ("epoch_", "epoch")):
        if head == "train" and rest.startswith(prefix) and not rest.startswith("epoch_duration"):
            window, rest = name, rest[len(prefix):]
    return window_metric(rest, phase=head, window=window, family=family, label=label)


class FakeRun:
    """Records what the sink does to a wandb run (no wandb involved)."""

    def __init__(self, run_id: str = "fake", *, resumed: bool = False, starting_step: int = 0):
        self.id = run_id
        self.sync_dir = f"/nowhere/{run_id}"
        self.resumed = resumed
        self.starting_step = starting_step
        self.logged: list[tuple[int, dict[str, Any]]] = []
        self.defined: dict[str, str] = {}
        self.summary: dict[str, Any] = {}
        self.finished = False
        self.thread_names: set[str] = set()

    def log(self, row: dict[str, Any], step: int) -> None:
        self.thread_names.add(threading.current_thread().name)
        self.logged.append((step, dict(row)))

    def define_metric(self, key: str, summary: str) -> None:
        self.defined[key] = summary

    def finish(self) -> None:
        self.finished = True


class BlockingRun(FakeRun):
    """A run whose ``log`` (or ``finish``) waits until the test releases it."""

    def __init__(self, *, block_finish: bool = False) -> None:
        super().__init__("blocking")
        self.entered = threading.Event()
        self.release = threading.Event()
        self.in_call = False
        self._block_finish = block_finish

    def log(self, row: dict[str, Any], step: int) -> None:
        self._block()
        super().log(row, step)

    def finish(self) -> None:
        if self._block_finish:
            self._block()
        super().finish()

    def _block(self) -> None:
        self.in_call = True
        self.entered.set()
        assert self.release.wait(30), "the test never released the blocked call"
        self.in_call = False
