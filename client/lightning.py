"""``MetricsCallback``: a Lightning job reports to the service with no hand-written hooks (DESIGN §7b).

Needs the ``[lightning]`` extra. The whole integration::

    from client.lightning import MetricsCallback

    trainer = Trainer(strategy="ddp", devices=2, callbacks=[
        MetricsCallback("http://metrics:8000", tasks={"genus": 100, "species": 1000}, config=cfg)])

    # training_step / validation_step return what the callback logs:
    return {"loss": loss, "logits": {"genus": g, "species": s}, "targets": {"genus": yg, "species": ys}}

What the callback does:

- rank and world size come from the trainer; the run id is the given one or one made on
  rank 0, broadcast to every rank (rank 0's wins), so ranks can never split into two runs;
  a resumed job (``ckpt_path=``) continues the checkpoint's run.
- train batches are logged at step ``trainer.global_step + 1`` (the optimizer step they
  contribute to, so gradient accumulation works), validation batches at
  ``trainer.global_step``; the sanity-check validation is not counted; the first
  validation dataloader is phase ``val``, the second ``val_mask`` (more: ``val_<i>``);
  ``trainer.test()`` logs phase ``test``.
- step outputs: ``{"loss", "logits": {task: [B, C]} or "topk": {task: [B, k]},
  "targets": {task: [B]}, "subsets"?: {family: labels}, "task_losses"?: {task: loss}}``;
  an output without ``targets`` is skipped with one warning.
- learning rates of every optimizer's param groups (``name`` of the group if set, else
  ``pg<j>``; ``opt<i>_`` first when there are several optimizers) at each step.
- ``state_dict``/``load_state_dict`` carry the metrics snapshot (a consistent cut taken on
  every rank: Lightning saves checkpoints on every rank) inside Lightning's checkpoint, so
  ``trainer.fit(ckpt_path=...)`` resumes the metrics exactly.
- the end of ``trainer.fit`` finishes the run (``final_*`` values, wandb) unless
  ``finish_on_fit_end=False``; then call ``callback.finish()`` once validation or tests
  after fit are done.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from client._client import MetricsClient
from client._rules import check_run_id

log = logging.getLogger(__name__)

STATE_FORMAT = "linnaeus-metrics/lightning-callback"
BATCH_KEYS = ("loss", "task_losses", "targets", "topk", "logits", "subsets", "sample_losses")


class MetricsCallback(Callback):
    """Reports a Lightning job's metrics to a linnaeus-metrics service.

    Args:
        url: the service root, e.g. ``"http://metrics:8000"``.
        tasks: ``{name: num_classes}`` (null class 0) or ``[{"name", "num_classes", "null_index"}]``.
        config: the training config's ``METRICS`` and ``EXPERIMENT`` sections.
        run_id: the run; None makes one on rank 0 (shared with every rank).
        total_steps: planned optimizer steps; default ``trainer.estimated_stepping_batches``.
        subsets: declared subset families ``{family: [labels]}``.
        token: bearer token; defaults to ``LINNAEUS_METRICS_TOKEN``.
        finish_on_fit_end: finish the run when ``trainer.fit`` ends.
        checkpoint_timeout_s: how long a checkpoint waits for every rank's cut.
        **client_options: more ``MetricsClient`` keyword arguments (e.g. ``max_queue_items``).
    """

    def __init__(
        self,
        url: str,
        tasks: Mapping[str, int] | list[dict[str, Any]],
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        *,
        total_steps: int | None = None,
        subsets: Mapping[str, list[str]] | None = None,
        token: str | None = None,
        finish_on_fit_end: bool = True,
        checkpoint_timeout_s: float = 60.0,
        **client_options: Any,
    ) -> None:
        self.url, self.tasks, self.config, self.subsets = url, tasks, config, subsets
        self.run_id = None if run_id is None else check_run_id(run_id)
        self.total_steps, self.token = total_steps, token
        self.finish_on_fit_end = finish_on_fit_end
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self.client_options = client_options
        self.client: MetricsClient | None = None
        self._trainer: Trainer | None = None
        self._restored: dict[str, Any] | None = None
        self._step = 0
        self._lrs: dict[str, float] = {}
        self._val_runs = 0
        self._train_epoch = -1
        self._train_epoch_ended = True
        self._warned: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks into each worker: the client (if any) stays behind
        state = dict(self.__dict__)
        state.update(client=None, _trainer=None)
        return state

    # ------------------------------------------------------------ setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Agree on the run id: rank 0's (given or made there) is broadcast to every rank."""
        self._trainer = trainer
        proposal = self.run_id or f"lightning-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.run_id = check_run_id(trainer.strategy.broadcast(proposal, src=0))

    def _client(self, trainer: Trainer) -> MetricsClient:
        """The client, built on first use (after any checkpoint was restored)."""
        if self.client is None:
            if self._restored is not None:
                self.run_id = str(self._restored["run_id"])
            assert self.run_id is not None, "setup() agrees on the run id first"
            self.client = MetricsClient(
                self.url, self.run_id, rank=trainer.global_rank, world_size=trainer.world_size, tasks=self.tasks,
                total_steps=self._total_steps(trainer), config=self.config, subsets=self.subsets, token=self.token,
                **self.client_options)
            if self._restored is not None:
                self.client.load_state_dict(self._restored["metrics"], timeout_s=self.checkpoint_timeout_s)
        return self.client

    def _total_steps(self, trainer: Trainer) -> int:
        if self.total_steps is not None:
            return self.total_steps
        estimated = trainer.estimated_stepping_batches if trainer.state.fn == "fit" else trainer.max_steps
        return int(estimated) if 0 < estimated < float("inf") else 1

    # ------------------------------------------------------------ training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the client (a resumed job continues the checkpoint's run)."""
        self._client(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close a train epoch a checkpoint left open (it was taken before the epoch's end)."""
        if not self._train_epoch_ended and trainer.current_epoch > self._train_epoch:
            self._client(trainer).end_epoch("train", self._train_epoch)
        self._train_epoch, self._train_epoch_ended = trainer.current_epoch, False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Remember the optimizer step this batch contributes to, and its learning rates."""
        self._step = trainer.global_step + 1
        self._lrs = learning_rates(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Log the batch and the learning rates at ``self._step``."""
        mc = self._client(trainer)
        self._log_batch(mc, outputs, "train", self._step, trainer.current_epoch)
        if self._lrs:
            mc.log_lr(self._step, self._lrs)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """End the train epoch on this rank."""
        self._client(trainer).end_epoch("train", trainer.current_epoch)
        self._train_epoch_ended = True

    # ------------------------------------------------------------ validation and test

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log a validation batch (not during the sanity check)."""
        if not trainer.sanity_checking:
            phase = ("val", "val_mask")[dataloader_idx] if dataloader_idx < 2 else f"val_{dataloader_idx}"
            self._log_batch(self._client(trainer), outputs, phase, trainer.global_step, self._val_runs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """End this validation run's epoch of every validation phase (not after the sanity check)."""
        if trainer.sanity_checking:
            return
        mc = self._client(trainer)
        for index in range(len(trainer.num_val_batches)):
            mc.end_epoch(("val", "val_mask")[index] if index < 2 else f"val_{index}", self._val_runs)
        self._val_runs += 1

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log a test batch as phase ``test`` (``test_<i>`` for later dataloaders)."""
        phase = "test" if dataloader_idx == 0 else f"test_{dataloader_idx}"
        self._log_batch(self._client(trainer), outputs, phase, trainer.global_step, 0)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """End the test epoch of every test phase."""
        mc = self._client(trainer)
        for index in range(len(trainer.num_test_batches)):
            mc.end_epoch("test" if index == 0 else f"test_{index}", 0)

    def _log_batch(self, mc: MetricsClient, outputs: Any, phase: str, step: int, epoch: int) -> None:
        if not isinstance(outputs, Mapping) or "targets" not in outputs:
            self._warn_once(phase, f"{phase} step output has no 'targets' (return a dict with 'loss', 'logits' "
                                   "or 'topk', 'targets'): its batches are not reported")
            return
        fields = {k: outputs[k] for k in BATCH_KEYS if k in outputs}
        mc.log_batch(step, epoch=epoch, phase=phase, **fields)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # ------------------------------------------------------------ checkpoints and the end

    def state_dict(self) -> dict[str, Any]:
        """The metrics snapshot at this checkpoint (a consistent cut: every rank calls this)."""
        if self.client is None:
            return {}
        return {"format": STATE_FORMAT, "run_id": self.run_id,
                "metrics": self.client.state_dict(timeout_s=self.checkpoint_timeout_s),
                "val_runs": self._val_runs, "train_epoch": self._train_epoch,
                "train_epoch_ended": self._train_epoch_ended}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the checkpoint's run at its cut (applied when the client is built)."""
        if state_dict.get("format") != STATE_FORMAT:
            return  # a checkpoint saved before the client existed carries no metrics
        self._restored = dict(state_dict)
        self._val_runs = int(state_dict["val_runs"])
        self._train_epoch, self._train_epoch_ended = int(state_dict["train_epoch"]), bool(
            state_dict["train_epoch_ended"])
        if self.client is not None:  # restored after the client was built: roll back now
            self.client.load_state_dict(state_dict["metrics"], timeout_s=self.checkpoint_timeout_s)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Flush every rank, then rank 0 finishes the run."""
        if self.client is None or not self.finish_on_fit_end:
            return
        if not self.client.flush():
            log.warning("rank %d: not every metrics record reached the service: %s", trainer.global_rank,
                        self.client.stats())
        trainer.strategy.barrier("linnaeus-metrics finish")
        if trainer.global_rank == 0:
            self.finish()

    def finish(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Finish the run (rank 0, once every rank is done); returns the service's reply."""
        if self.client is None:
            raise RuntimeError("finish: no client yet (the callback builds it when training starts)")
        return self.client.finish(timeout_s)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Deliver what is queued (the client stays open for a later validate()/test())."""
        if self.client is not None:
            self.client.flush()


def learning_rates(trainer: Trainer) -> dict[str, float]:
    """Every optimizer's param group learning rates, named as the module docstring says."""
    optimizers = trainer.optimizers
    out = {}
    for i, optimizer in enumerate(optimizers):
        prefix = f"opt{i}_" if len(optimizers) > 1 else ""
        for j, group in enumerate(optimizer.param_groups):
            out[f"{prefix}{group.get('name') or f'pg{j}'}"] = float(group["lr"])
    return out
