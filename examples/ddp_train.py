"""A real torch DDP job (gloo, CPU) that reports its metrics to a linnaeus-metrics service.

N ranks, spawned by this script, train a shared MLP trunk with three hierarchical heads
(family/genus/species: 4/12/40 classes, class 0 = "unknown at this rank") on seeded
synthetic data. Each step every rank logs its batch (logits as torch tensors: top-k runs in
torch, only indices reach the host), learning rates and data-loader stats; each epoch ends
with the phases ``val`` and ``val_mask`` (metadata features zeroed). The job is bitwise
deterministic for a fixed ``--seed``, so ``--checkpoint``/``--crash-at``/``--resume`` give
exactly the metrics of an uninterrupted run. See examples/README.md.

    python examples/ddp_train.py --url http://127.0.0.1:8000 --run-id demo --world-size 2 --steps 12
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from client import MetricsClient

TASKS = {"family": 4, "genus": 12, "species": 40}  # class 0 of every task: null ("unknown")
N_IMG, N_META, BATCH, VAL_PER_RANK = 12, 4, 16, 32
RARITY = ("unknown", "common", "rare")
Batch = list[Tensor]  # features [B, 16], targets [B, 3], metadata masked [B], rarity code [B]


def make_datasets(seed: int, n_train: int, n_val: int) -> tuple[TensorDataset, TensorDataset]:
    """Zipf-distributed species; features from species (image) and family (metadata) prototypes."""
    g = torch.Generator().manual_seed(seed)
    genus_of, family_of = 1 + torch.arange(39) % 11, 1 + torch.arange(11) % 3  # 39 -> 11 -> 3
    protos, meta_protos = torch.randn(40, N_IMG, generator=g), torch.randn(4, N_META, generator=g)
    freq = 1.0 / torch.arange(1, 40, dtype=torch.float)  # species s has frequency 1/s

    def sample(n: int, mask_prob: float) -> TensorDataset:
        species = 1 + torch.multinomial(freq, n, replacement=True, generator=g)
        genus = genus_of[species - 1]
        family = family_of[genus - 1]
        x = torch.cat([protos[species] + 1.5 * torch.randn(n, N_IMG, generator=g),
                       meta_protos[family] + 0.5 * torch.randn(n, N_META, generator=g)], 1)
        rarity = torch.where(species <= 8, 1, 2)  # the 8 most frequent species are "common"
        no_species = torch.rand(n, generator=g) < 0.2  # partial labels: null lower ranks
        no_genus = no_species & (torch.rand(n, generator=g) < 0.4)
        species[no_species], genus[no_genus], rarity[no_species] = 0, 0, 0
        masked = torch.rand(n, generator=g) < mask_prob  # metadata dropout while training
        x[masked, N_IMG:] = 0.0
        return TensorDataset(x, torch.stack([family, genus, species], 1), masked, rarity)

    return sample(n_train, 0.25), sample(n_val, 0.0)


class Net(nn.Module):
    """Shared trunk, one linear head per taxonomic rank."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(N_IMG + N_META, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, n) for t, n in TASKS.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


class PrefetchLoader:
    """Wraps a DataLoader: keeps ``depth`` batches prefetched and reports pipeline stats."""

    def __init__(self, loader: DataLoader[Any], depth: int = 2) -> None:
        self.loader, self.depth, self.rate = loader, depth, 0.0
        self.queue: collections.deque[Batch] = collections.deque()

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The epoch's batches in the sampler's seeded order, the first ``skip`` dropped."""
        assert isinstance(self.loader.sampler, DistributedSampler)
        self.loader.sampler.set_epoch(epoch)
        source, self.queue = iter(self.loader), collections.deque()
        for i in itertools.count():
            started, fetched = time.perf_counter(), 0
            while len(self.queue) <= self.depth and (batch := next(source, None)) is not None:
                self.queue.append(batch)
                fetched += len(batch[0])
            if not self.queue:
                return
            if fetched:
                self.rate = fetched / max(time.perf_counter() - started, 1e-9)
            batch = self.queue.popleft()
            if i >= skip:
                yield batch

    def stats(self) -> dict[str, float]:
        return {"queue_depths/batch_index_q": float(len(self.queue)),
                "cache/size": float(sum(len(b[0]) for b in self.queue)),  # samples held
                "throughput/prefetch_samples_per_sec": self.rate}


def targets_of(y: Tensor) -> dict[str, Tensor]:
    return {t: y[:, i] for i, t in enumerate(TASKS)}


def subsets_of(masked: Tensor, rarity: Tensor) -> dict[str, list[str]]:
    return {"rarity": [RARITY[c] for c in rarity.tolist()],
            "mask": ["masked" if m else "unmasked" for m in masked.tolist()]}


def losses_of(logits: dict[str, Tensor], y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The summed loss (for backward) and the per-task losses (detached, for logging)."""
    task_losses = {t: F.cross_entropy(logits[t], y[:, i]) for i, t in enumerate(TASKS)}
    return sum(task_losses.values(), torch.zeros(())), {t: v.detach() for t, v in task_losses.items()}


def entropy(logits: Tensor) -> float:
    """Mean entropy of the predicted distribution (a custom metric: how sure the model is)."""
    return float(torch.distributions.Categorical(logits=logits.detach()).entropy().mean())


def train_step(model: DDP, opt: torch.optim.Optimizer, sched: Any, x: Tensor, y: Tensor
               ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], dict[str, float]]:
    """Forward, backward (gradients all-reduced by DDP), optimizer and scheduler step."""
    logits = model(x)
    loss, task_losses = losses_of(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    heads = model.module.heads
    norms = {t: float(torch.cat([p.grad.flatten() for p in heads[t].parameters()]).norm()) for t in TASKS}
    gradnorm = {"avg_norm": sum(norms.values()) / len(norms),
                **{f"norm/{t}": v for t, v in norms.items()},
                **{f"weight/{t}": 1.0 for t in TASKS}}  # fixed task weights: no reweighting here
    opt.step()
    sched.step()
    return logits, loss.detach(), task_losses, gradnorm


@torch.no_grad()
def validate(mc: MetricsClient, net: Net, loader: DataLoader[Any], step: int, epoch: int,
             phase: str) -> None:
    """One pass over this rank's validation shard; ``val_mask`` zeroes the metadata."""
    net.eval()
    for x, y, masked, rarity in loader:
        if phase == "val_mask":
            x, masked = torch.cat([x[:, :N_IMG], torch.zeros(len(x), N_META)], 1), torch.ones_like(masked)
        logits = net(x)
        loss, task_losses = losses_of(logits, y)
        mc.log_batch(step, epoch=epoch, phase=phase, loss=loss, task_losses=task_losses,
                     targets=targets_of(y), logits=logits, subsets=subsets_of(masked, rarity))
    mc.end_epoch(phase, epoch)
    net.train()


def metrics_config(wandb: bool) -> dict[str, Any]:
    """The linnaeus config sections the service reads (logging schedule, wandb options)."""
    return {"SCHEDULE": {"METRICS": {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4,
                                     "LR_INTERVAL": 1, "PIPELINE_INTERVAL": 2}},
            "EXPERIMENT": {"PROJECT": "linnaeus-metrics-example", "WANDB": {"ENABLED": wandb}}}


def train(rank: int, args: argparse.Namespace, port: int) -> None:
    """One rank: DDP setup, then the training loop with metrics and checkpoints."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    per_epoch = math.ceil(args.steps / args.epochs)
    train_set, val_set = make_datasets(args.seed, per_epoch * BATCH * args.world_size,
                                       VAL_PER_RANK * args.world_size)
    loader = PrefetchLoader(DataLoader(train_set, BATCH, sampler=DistributedSampler(
        train_set, args.world_size, rank, shuffle=True, seed=args.seed, drop_last=True)))
    val_loader = DataLoader(val_set, BATCH, sampler=DistributedSampler(val_set, shuffle=False))
    net = Net()
    opt = torch.optim.AdamW([{"name": "backbone", "params": net.trunk.parameters(), "lr": 3e-3},
                             {"name": "heads", "params": net.heads.parameters(), "lr": 1e-2}])
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        opt, lambda s: min(1.0, (s + 1) / 3) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    mc = MetricsClient(args.url, args.run_id, rank=rank, world_size=args.world_size, tasks=TASKS,
                       total_steps=args.steps, config=metrics_config(args.wandb), token=args.token,
                       subsets={"rarity": list(RARITY), "mask": ["masked", "unmasked"]})
    path, step = f"{args.checkpoint}_rank{rank}.pt", 0
    if args.resume:  # every rank loads its own file
        ckpt = torch.load(path, weights_only=True)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        mc.load_state_dict(ckpt["metrics"])  # roll the run's metrics back to the checkpoint
        step = ckpt["step"]
    model, batches = DDP(net), None
    while step < args.steps:
        step += 1
        epoch, index = divmod(step - 1, per_epoch)
        if batches is None or index == 0:
            batches = loader.epoch(epoch, skip=index)
        x, y, masked, rarity = next(batches)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        logits, loss, task_losses, gradnorm = train_step(model, opt, sched, x, y)
        # --- linnaeus-metrics: the per-step integration -----------------------------------
        mc.log_batch(step, epoch=epoch, phase="train", loss=loss, task_losses=task_losses,
                     targets=targets_of(y), logits=logits,  # tensors: top-k runs in torch
                     subsets=subsets_of(masked, rarity))
        mc.log_lr(step, lrs)
        mc.log_pipeline(step, loader.stats())
        if step % 3 == 0:  # GradNorm state at its own cadence
            mc.log_gradnorm(step, gradnorm)
        if step % 4 == 0:
            mc.log_custom(step, {"species_entropy": entropy(logits["species"])},
                          higher_is_better={"species_entropy": False})
        if step == args.crash_at:
            os._exit(1)  # simulated crash: nothing flushed, nothing closed
        if index == per_epoch - 1 or step == args.steps:  # epoch end: close train, validate
            mc.end_epoch("train", epoch)
            for phase in ("val", "val_mask"):
                validate(mc, net, val_loader, step, epoch, phase)  # log_batch(phase=...) + end_epoch
        if args.checkpoint and step == args.checkpoint_at:  # state_dict() on every rank
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "step": step, "metrics": mc.state_dict()}, path)
        # -----------------------------------------------------------------------------------
    mc.close()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service root")
    p.add_argument("--run-id", required=True)
    p.add_argument("--world-size", type=int, default=2, help="ranks to spawn")
    p.add_argument("--steps", type=int, default=12, help="total optimizer steps")
    p.add_argument("--epochs", type=int, default=2, help="epochs the steps are split into")
    p.add_argument("--checkpoint", help="checkpoint path prefix (files PREFIX_rank{r}.pt)")
    p.add_argument("--checkpoint-at", type=int, default=6, help="step to checkpoint after")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint")
    p.add_argument("--crash-at", type=int, default=-1, help="ranks os._exit(1) at this step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", default=os.environ.get("LINNAEUS_METRICS_TOKEN"))
    p.add_argument("--wandb", action="store_true", help="let the service forward to wandb")
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint")
    try:
        mp.spawn(train, args=(args, free_port()), nprocs=args.world_size, join=True)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as http:
        http.post(f"/v1/runs/{args.run_id}/finish").raise_for_status()  # final_* summary
        latest = http.get(f"/v1/runs/{args.run_id}/metrics").raise_for_status().json()
    print(f"run {latest['run_id']} at step {latest['step']}")
    for key, entry in sorted(latest["metrics"].items()):
        if "/subset/" not in key:  # `linnaeus-metrics show RUN` lists every key
            print(f"  {key:<44} {entry['value']:>12.6g}  (step {entry['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
