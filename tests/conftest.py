"""Factories shared by the test packages: seeded random runs as plain records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from client._wire import BatchEvent, Event, ScalarEvent
from tests.reference import Rec

TASKS = [("genus", 6, 0), ("species", 11, 0), ("family", 4, 3)]
FAMILIES = {"rarity": ["common", "rare", "very_rare"], "mask": ["masked", "unmasked"]}


@dataclass
class RunData:
    """A generated multi-rank run: batch records and scalar records per rank."""

    world_size: int
    steps_per_epoch: int
    epochs: int
    recs: list[Rec] = field(default_factory=list)
    scalars: list[tuple[int, str, int, dict[str, float]]] = field(default_factory=list)

    @property
    def tasks(self) -> list[tuple[str, int]]:
        return [(name, null) for name, _, null in TASKS]

    @property
    def last_step(self) -> int:
        return self.steps_per_epoch * self.epochs

    def spec(self, run_id: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": run_id, "world_size": self.world_size, "total_steps": self.last_step,
            "tasks": [{"name": n, "num_classes": c, "null_index": z} for n, c, z in TASKS],
            "subsets": {"rarity": FAMILIES["rarity"]},
            "config": {"METRICS": metrics},
        }

    def rank_stream(self, rank: int) -> list[tuple[str, Any]]:
        """The rank's records in the order its trainer logs them: ("batch"|"scalar"|"end", item)."""
        out: list[tuple[str, Any]] = []
        for epoch in range(self.epochs):
            for rec in [r for r in self.recs if r.rank == rank and r.epoch == epoch and r.phase == "train"]:
                out.append(("batch", rec))
                out.extend(("scalar", s) for s in self.scalars if s[0] == rank and s[2] == rec.step)
            out.append(("end", ("train", epoch)))
            for phase in ("val", "val_mask"):
                out.extend(("batch", r) for r in self.recs if r.rank == rank and r.epoch == epoch and r.phase == phase)
                out.append(("end", (phase, epoch)))
        return out


def make_run(seed: int, world_size: int = 3, steps_per_epoch: int = 7, epochs: int = 2,
             batch: tuple[int, int] = (1, 9)) -> RunData:
    """Seeded random run with null targets, all-null samples, subsets and scalars."""
    rng = np.random.default_rng(seed)
    data = RunData(world_size, steps_per_epoch, epochs)
    clock = 1000.0
    for epoch in range(epochs):
        for local in range(1, steps_per_epoch + 1):
            step = epoch * steps_per_epoch + local
            for rank in range(world_size):
                clock += float(rng.uniform(0.01, 0.2))
                data.recs.append(_rec(rng, rank, step, epoch, "train", clock, batch))
                _scalars(rng, data, rank, step)
        for phase in ("val", "val_mask"):
            for rank in range(world_size):
                for _ in range(int(rng.integers(0, 3))):
                    clock += 0.05
                    data.recs.append(_rec(rng, rank, (epoch + 1) * steps_per_epoch, epoch, phase, clock, batch))
    return data


def _rec(rng: np.random.Generator, rank: int, step: int, epoch: int, phase: str, clock: float,
         batch: tuple[int, int]) -> Rec:
    size = int(rng.integers(batch[0], batch[1] + 1))
    targets, topk = {}, {}
    all_null = rng.random(size) < 0.15
    for name, classes, null in TASKS:
        y = rng.integers(0, classes, size)
        y[rng.random(size) < 0.3] = null
        y[all_null] = null
        top = np.stack([rng.permutation(classes)[:3] for _ in range(size)])
        lucky = rng.random(size) < 0.5
        top[lucky, int(rng.integers(0, 3))] = y[lucky]
        top = _dedupe_rows(top, y, classes, rng)
        targets[name], topk[name] = y.tolist(), top.tolist()
    subsets = {"rarity": rng.choice(FAMILIES["rarity"], size).tolist()}
    if phase != "train" or rng.random() < 0.7:
        subsets["mask"] = rng.choice(FAMILIES["mask"], size).tolist()
    has_sample = rng.random() < 0.5
    return Rec(
        rank=rank, step=step, epoch=epoch, phase=phase, time=clock, targets=targets, topk=topk,
        loss=float(rng.uniform(0.1, 5.0)),
        task_losses={n: float(rng.uniform(0.01, 2.0)) for n, _, _ in TASKS if rng.random() < 0.8},
        subsets=subsets if rng.random() < 0.9 else {},
        sample_losses=rng.uniform(0, 3, size).tolist() if has_sample else None,
    )


def _dedupe_rows(top: np.ndarray, y: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Make every top-k row hold distinct classes, as a real top-k does."""
    rows = []
    for row in top.tolist():
        seen: list[int] = []
        for c in row:
            if c not in seen:
                seen.append(c)
        rest = [c for c in rng.permutation(classes).tolist() if c not in seen]
        rows.append((seen + rest)[:3])
    return np.array(rows, dtype=np.int64)


def _scalars(rng: np.random.Generator, data: RunData, rank: int, step: int) -> None:
    data.scalars.append((rank, "lr", step, {"backbone": float(1e-3 / step), "head": float(rng.uniform(0, 1e-2))}))
    if rng.random() < 0.5:
        data.scalars.append((rank, "pipeline", step, {"queue_depths/batch_index_q": float(rng.integers(0, 50))}))
    if step % 3 == 0 and rank == 0:
        data.scalars.append((rank, "gradnorm", step, {"avg_norm": float(rng.uniform(0, 5)), "weight/genus": 0.5}))
    if step % 4 == 0:
        data.scalars.append((rank, "custom", step, {"map": float(rng.uniform(0, 1))}))


def to_event(rec: Rec) -> BatchEvent:
    """A reference record as the wire's decoded batch."""
    subsets = {}
    for family, labels in rec.subsets.items():
        vocab = sorted(set(labels))
        subsets[family] = (vocab, np.array([vocab.index(v) for v in labels], dtype=np.int64))
    return BatchEvent(
        step=rec.step, epoch=rec.epoch, phase=rec.phase, time=rec.time,
        targets={k: np.array(v, dtype=np.int64) for k, v in rec.targets.items()},
        topk={k: np.array(v, dtype=np.int64) for k, v in rec.topk.items()},
        sizes=[rec.size], losses=None if rec.loss is None else [rec.loss],
        task_losses={k: [v] for k, v in rec.task_losses.items()}, subsets=subsets,
        sample_losses=None if rec.sample_losses is None else np.array(rec.sample_losses),
    )


def stream_events(data: RunData, rank: int) -> list[Event]:
    """The rank's whole stream as decoded events."""
    from client._wire import EndEpochEvent

    out: list[Event] = []
    for kind, item in data.rank_stream(rank):
        if kind == "batch":
            out.append(to_event(item))
        elif kind == "scalar":
            _, scalar_kind, step, values = item
            hib = {"map": True} if scalar_kind == "custom" else {}
            out.append(ScalarEvent(scalar_kind, step, 0.0, dict(values), hib))
        else:
            out.append(EndEpochEvent(item[0], item[1], 0.0))
    return out


@pytest.fixture(autouse=True, scope="session")
def _reap_service_processes() -> Any:
    """No test run leaves a service process behind, even when a test fails half-way."""
    yield
    from tests.e2e.conftest import ServiceProcess

    ServiceProcess.reap()


@pytest.fixture
def run_data() -> RunData:
    return make_run(seed=7)


class ManualClock:
    """A clock the test moves by setting ``now`` (inject it wherever code reads the time)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
