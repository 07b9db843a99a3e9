"""A fake trainer: replays one rank's generated records through a real MetricsClient."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from client import MetricsClient
from tests.conftest import RunData
from tests.reference import Rec


class Trainer:
    """One rank's process: a client whose clock reads the records' own times."""

    def __init__(self, url: str, data: RunData, rank: int, metrics: dict[str, Any], run_id: str = "e2e",
                 **client_args: Any) -> None:
        self.data, self.rank, self.now = data, rank, 0.0
        spec = data.spec(run_id, metrics)
        self.client = MetricsClient(url, run_id, rank=rank, world_size=data.world_size, tasks=spec["tasks"],
                                    total_steps=spec["total_steps"], config=spec["config"], subsets=spec["subsets"],
                                    clock=lambda: self.now, **client_args)

    def stream(self) -> list[tuple[str, Any]]:
        return self.data.rank_stream(self.rank)

    def play(self, items: list[tuple[str, Any]]) -> None:
        for kind, item in items:
            if kind == "batch":
                self.batch(item)
            elif kind == "scalar":
                self.scalar(item)
            else:
                self.client.end_epoch(*item)

    def batch(self, rec: Rec) -> None:
        self.now = rec.time
        self.client.log_batch(
            rec.step, epoch=rec.epoch, phase=rec.phase, loss=rec.loss, task_losses=rec.task_losses,
            targets={k: np.array(v) for k, v in rec.targets.items()},
            topk={k: np.array(v) for k, v in rec.topk.items()},
            subsets=rec.subsets or None,
            sample_losses=None if rec.sample_losses is None else np.array(rec.sample_losses),
        )

    def scalar(self, item: tuple[int, str, int, dict[str, float]]) -> None:
        _, kind, step, values = item
        if kind == "custom":
            self.client.log_custom(step, values, higher_is_better={"map": True})
        else:
            getattr(self.client, f"log_{kind}")(step, values)


def split_at(items: list[tuple[str, Any]], k: int) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """A rank's stream up to and including step k's train records, and the rest."""
    def is_train(kind: str, item: Any) -> bool:
        return kind == "scalar" or (kind == "batch" and item.phase == "train")

    def step(kind: str, item: Any) -> int:
        return int(item[2]) if kind == "scalar" else int(item.step)

    cut = max((i + 1 for i, (kind, item) in enumerate(items) if is_train(kind, item) and step(kind, item) <= k),
              default=0)
    return items[:cut], items[cut:]


def play_all(trainers: Sequence[Trainer], parts: Sequence[list[tuple[str, Any]]] | None = None,
             timeout_s: float = 60.0) -> None:
    """Each trainer plays its part (its whole stream when ``parts`` is None) in its own thread, as ranks do."""
    parts = [t.stream() for t in trainers] if parts is None else parts
    threads = [threading.Thread(target=t.play, args=(p,)) for t, p in zip(trainers, parts, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
