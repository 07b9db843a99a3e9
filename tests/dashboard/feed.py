"""A 2-rank training run fed through the real client: train, val, subsets, LR, pipeline, GradNorm."""

from __future__ import annotations

from typing import Any

import numpy as np

from client import MetricsClient

TASKS = {"genus": 6, "species": 12}
SUBSETS = {"rarity": ["common", "rare"]}
METRICS: dict[str, Any] = {"STEP_INTERVAL": 1, "WANDB_INTERVAL": 5, "CONSOLE_INTERVAL": 0, "LR_INTERVAL": 1,
                           "PIPELINE_INTERVAL": 2}
STEPS_PER_EPOCH = 8
BATCH = 16


class Feed:
    """Two ranks (two real clients) of one run; ``train(a, b)`` logs steps a..b on the given ranks."""

    def __init__(self, url: str, run_id: str, total_steps: int = 400, token: str | None = None,
                 alerts: list[dict[str, Any]] | None = None, seed: int = 7) -> None:
        config = {"METRICS": {**METRICS, **({"ALERTS": alerts} if alerts else {})}}
        self.rng = np.random.default_rng(seed)
        self.clients = [MetricsClient(url, run_id, rank=r, world_size=2, tasks=TASKS, total_steps=total_steps,
                                      config=config, subsets=SUBSETS, token=token, flush_interval_s=0.02)
                        for r in range(2)]

    def _batch(self, client: MetricsClient, step: int, phase: str) -> None:
        rng, epoch = self.rng, (step - 1) // STEPS_PER_EPOCH
        targets = {t: rng.integers(0, n, BATCH) for t, n in TASKS.items()}
        topk = {}
        for t, n in TASKS.items():  # right about 60% of the time, so curves are not flat
            guess = np.where(rng.random(BATCH) < 0.6, targets[t], rng.integers(0, n, BATCH))
            topk[t] = np.stack([guess, (guess + 1) % n, (guess + 2) % n], axis=1)
        client.log_batch(step, epoch=epoch, phase=phase, loss=float(2.0 / step ** 0.3 + rng.random() * 0.1),
                         task_losses={t: float(rng.random() + 0.5) for t in TASKS}, targets=targets, topk=topk,
                         subsets={"rarity": rng.choice(SUBSETS["rarity"], BATCH).tolist()})

    def train(self, first: int, last: int, ranks: tuple[int, ...] = (0, 1)) -> None:
        """Steps ``first..last`` of training on ``ranks``, closing train and val epochs at their ends."""
        for step in range(first, last + 1):
            for rank in ranks:
                client = self.clients[rank]
                self._batch(client, step, "train")
                client.log_lr(step, {"backbone": 1e-3 * 0.98 ** step, "head": 5e-3 * 0.98 ** step})
                client.log_pipeline(step, {"queue_depths/batch_index_q": float(step % 5 + rank),
                                           "cache/size": float(100 + step)})
                if step % 4 == 0:
                    client.log_gradnorm(step, {"avg_norm": 1.0 + 0.1 * rank, "weight/genus": 0.5,
                                               "weight/species": 0.5})
            if step % STEPS_PER_EPOCH == 0 and len(ranks) == 2:
                self.close_epoch(step)

    def close_epoch(self, step: int) -> None:
        epoch = (step - 1) // STEPS_PER_EPOCH
        for client in self.clients:
            client.end_epoch("train", epoch)
            self._batch(client, step, "val")
            client.end_epoch("val", epoch)

    def checkpoint(self) -> list[dict[str, Any]]:
        """A consistent cut on both ranks (in threads: each call waits for the other's marker)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda c: c.state_dict(timeout_s=30), self.clients))

    def flush(self, ranks: tuple[int, ...] = (0, 1)) -> None:
        for rank in ranks:
            assert self.clients[rank].flush(30), self.clients[rank].stats()

    def close(self) -> None:
        for client in self.clients:
            client.close(10)
