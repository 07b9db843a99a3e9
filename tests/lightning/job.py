"""A tiny Lightning DDP job (2 CPU ranks, gloo, ddp_spawn) using MetricsCallback.

It also computes torchmetrics ``MulticlassAccuracy`` (micro, top-1 and top-3) in the same
job, synced across ranks, and writes them with the run id to ``--out`` (rank 0). Task
``genus`` reports bf16 logits (quantised, so they tie often), ``species`` fp32 logits.

    python tests/lightning/job.py --url URL --out out.json --ckpt-dir DIR [--run-id ID]
                                  [--crash-at STEP] [--resume CKPT]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from client.lightning import MetricsCallback


def _destroy_process_group() -> None:
    """Lightning leaves the spawned workers' gloo process group alive: torn down with the
    interpreter, its threads now and then abort the worker ("terminate called without an active
    exception", seen once in a full suite run). This module is imported by every spawned worker."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_destroy_process_group)

TASKS = {"genus": 5, "species": 7}
CONFIG = {"METRICS": {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 2, "LR_INTERVAL": 1, "CONSOLE_INTERVAL": 0,
                      "PIPELINE_INTERVAL": 0}}
EPOCHS, FEATURES, BATCH = 3, 8, 8
PHASES = ("train", "val", "val_mask")


def data(seed: int, size: int, masked: bool = False) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, FEATURES, generator=gen)
    if masked:
        x[:, FEATURES // 2:] = 0.0  # metadata masked
    ys = [torch.randint(0, n, (size,), generator=gen) for n in TASKS.values()]
    return TensorDataset(x, *ys)


def tie_broken(logits: torch.Tensor) -> torch.Tensor:
    """Scores whose order is (score desc, class index asc): torchmetrics' topk then agrees on ties."""
    scores = logits.double()
    distinct = scores.flatten().unique()
    gap = float((distinct[1:] - distinct[:-1]).min()) if distinct.numel() > 1 else 1.0
    return scores - torch.arange(scores.shape[1], dtype=torch.float64) * gap / (2 * scores.shape[1])


class Net(LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.body = torch.nn.Linear(FEATURES, 16)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(16, n) for t, n in TASKS.items()})
        self.acc = torch.nn.ModuleDict({
            f"{phase}_{task}_{k}": MulticlassAccuracy(num_classes=n, top_k=k, average="micro")
            for phase in PHASES for task, n in TASKS.items() for k in (1, 3)})
        self.results: list[dict[str, Any]] = []
        self.ties = 0
        self.crash_at: int | None = None

    def _step(self, batch: list[torch.Tensor], phase: str) -> dict[str, Any]:
        x, *ys = batch
        hidden = torch.relu(self.body(x))
        raw = {t: head(hidden) for t, head in self.heads.items()}
        targets = dict(zip(TASKS, ys, strict=True))
        loss = sum(torch.nn.functional.cross_entropy(raw[t], targets[t]) for t in TASKS)
        genus = (raw["genus"].detach() * 2).round().div(2).to(torch.bfloat16)  # bf16 ties, as in real jobs
        logits = {"genus": genus, "species": raw["species"].detach()}
        if not self.trainer.sanity_checking:
            self.ties += int((genus.unsqueeze(2) == genus.unsqueeze(1)).sum() - genus.numel())
            for task in TASKS:
                for k in (1, 3):
                    self.acc[f"{phase}_{task}_{k}"].update(tie_broken(logits[task]), targets[task])
        return {"loss": loss, "logits": logits, "targets": targets}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, Any]:
        if self.crash_at is not None and self.trainer.global_step + 1 == self.crash_at:
            os._exit(1)  # a crash: nothing flushed, nothing closed
        return self._step(batch, "train")

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._step(batch, PHASES[1 + dataloader_idx])

    def _collect(self, phases: tuple[str, ...], epoch: int) -> None:
        for phase in phases:
            for task in TASKS:
                for k in (1, 3):
                    metric = self.acc[f"{phase}_{task}_{k}"]
                    self.results.append({"phase": phase, "epoch": epoch, "task": task, "k": k,
                                         "value": 100.0 * float(metric.compute()), "step": self.global_step})
                    metric.reset()

    def on_train_epoch_end(self) -> None:
        self._collect(("train",), self.current_epoch)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._collect(("val", "val_mask"), self.current_epoch)

    def on_fit_end(self) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, MetricsCallback))
        ties = int(self.trainer.strategy.reduce(torch.tensor(float(self.ties)), reduce_op="sum"))
        run_ids = self.trainer.strategy.all_gather(torch.tensor([ord(c) for c in (callback.run_id or "")]))
        if self.trainer.global_rank == 0:
            report = {"run_id": callback.run_id, "run_ids": ["".join(map(chr, r.tolist())) for r in run_ids],
                      "torchmetrics": self.results, "ties": ties, "stats": callback.client.stats()
                      if callback.client else None}
            Path(self.out).write_text(json.dumps(report))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD([{"params": self.body.parameters(), "name": "backbone"},
                                     {"params": self.heads.parameters(), "name": "heads", "lr": 0.05}], lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(data(1, 64), batch_size=BATCH)

    def val_dataloader(self) -> list[DataLoader[Any]]:
        return [DataLoader(data(2, 32), batch_size=BATCH), DataLoader(data(2, 32, masked=True), batch_size=BATCH)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--run-id")
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--resume")
    args = parser.parse_args()
    seed_everything(0, workers=True)
    torch.set_num_threads(1)
    model = Net(args.out)
    model.crash_at = args.crash_at
    callback = MetricsCallback(args.url, tasks=TASKS, config=CONFIG, run_id=args.run_id, flush_interval_s=0.05)
    checkpoints = ModelCheckpoint(dirpath=args.ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=EPOCHS, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=2,
                      callbacks=[callback, checkpoints], deterministic=True)
    trainer.fit(model, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
