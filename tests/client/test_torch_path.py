"""The client's torch path with real torch tensors (DESIGN §1 ``[torch]``, §7).

Top-k from torch logits equals ``torch.topk`` on the same tensor and only its integer
indices leave the tensor (and reach the wire); torch targets, 0-d losses and tensors that
require grad are accepted; ``state_dict()`` survives ``torch.save`` /
``torch.load(weights_only=True)`` unchanged.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

from client import MetricsClient
from client._wire import unpack_body
from tests.client.client_fakes import FakeClock, FakeService

torch = pytest.importorskip("torch")

try:  # one test runs against the real service (needs the [service] extra)
    from tests.e2e.conftest import LiveServer, live_server  # noqa: F401
except ImportError:  # pragma: no cover - client-only install
    LiveServer = None  # type: ignore[assignment,misc]

Make = Callable[..., MetricsClient]
ROOT = Path(__file__).resolve().parents[2]
TASKS = {"genus": 5, "species": 10}


def torch_batch(gen: Any, size: int = 16, requires_grad: bool = False) -> dict[str, Any]:
    logits = {t: torch.randn(size, n, generator=gen, requires_grad=requires_grad) for t, n in TASKS.items()}
    targets = {t: torch.randint(0, n, (size,), generator=gen) for t, n in TASKS.items()}
    return {"logits": logits, "targets": targets}


def save_and_load(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def builtin_types(value: Any) -> set[type]:
    if isinstance(value, dict):
        return {dict} | {t for k, v in value.items() for t in builtin_types(k) | builtin_types(v)}
    if isinstance(value, list | tuple):
        return {type(value)} | {t for v in value for t in builtin_types(v)}
    return {type(value)}


# ------------------------------------------------------------------ top-k and the wire


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_topk_of_torch_logits_breaks_ties_by_the_lowest_index(service: FakeService, make_client: Make,
                                                                dtype: str) -> None:
    gen = torch.Generator().manual_seed(5)
    mc = make_client()
    # few distinct values in low precision: ties are frequent (issue 14: torch.topk orders them as it likes)
    logits = {t: (torch.randn(64, n, generator=gen) * 4).round().to(getattr(torch, dtype)) for t, n in TASKS.items()}
    targets = {t: torch.randint(0, n, (64,), generator=gen) for t, n in TASKS.items()}
    mc.log_batch(1, epoch=0, targets=targets, logits=logits)
    assert mc.flush(5)
    (event,) = service.batches()
    for task, scores in logits.items():
        rows = scores.double().tolist()
        expected = [sorted(range(len(row)), key=lambda j, row=row: (-row[j], j))[:3] for row in rows]
        assert event.topk[task].dtype.kind in "iu"  # the narrowest type on the wire, decoded without a copy
        np.testing.assert_array_equal(event.topk[task], np.array(expected))


def test_only_narrow_indices_reach_the_wire(service: FakeService) -> None:
    bodies: list[tuple[bytes, str]] = []

    def record(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            bodies.append((request.content, request.headers["content-type"]))
        return service.handle(request)

    mc = MetricsClient("http://metrics.test", "exp", rank=0, world_size=1, tasks={"species": 1000},
                       total_steps=10, transport=httpx.MockTransport(record), flush_interval_s=0.01,
                       clock=FakeClock())
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 1000, generator=gen)  # 256 KB of float32 scores
    mc.log_batch(1, epoch=0, targets={"species": torch.randint(0, 1000, (64,), generator=gen)},
                 logits={"species": logits})
    assert mc.flush(5)
    mc.close(1)
    ((raw, content_type),) = bodies
    assert len(raw) < 4096
    (batch,) = [e for e in unpack_body(raw, content_type)["events"] if e["kind"] == "batch"]
    topk = batch["topk"]["species"]
    assert (topk["dtype"], topk["shape"], len(topk["data"])) == ("<u2", [64, 3], 64 * 3 * 2)  # 1,000 classes
    np.testing.assert_array_equal(np.frombuffer(topk["data"], "<u2").reshape(64, 3),
                                  torch.topk(logits, 3, dim=1).indices.numpy())
    assert batch["targets"]["species"]["dtype"] == "<u2"


class HostCopySpy(torch.Tensor):
    """Records every tensor whose data is copied out to numpy / Python."""

    copies: ClassVar[list[tuple[str, str, tuple[int, ...]]]] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in ("numpy", "tolist", "item", "__array__", "__float__"):
            cls.copies.append((name, str(args[0].dtype), tuple(args[0].shape)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_only_the_indices_leave_the_logits_tensor(service: FakeService, make_client: Make) -> None:
    gen = torch.Generator().manual_seed(2)
    mc = make_client()
    batch = torch_batch(gen, size=8)
    HostCopySpy.copies = []
    logits = {t: v.as_subclass(HostCopySpy) for t, v in batch["logits"].items()}
    mc.log_batch(1, epoch=0, targets=batch["targets"], logits=logits)
    assert HostCopySpy.copies == [("numpy", "torch.int64", (8, 3))] * len(TASKS)
    assert mc.flush(5)


# ------------------------------------------------------------------ tensors as arguments


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "uint8"])
def test_torch_integer_targets_and_topk_are_accepted(service: FakeService, make_client: Make, dtype: str) -> None:
    gen = torch.Generator().manual_seed(3)
    mc = make_client()
    targets = {t: torch.randint(0, n, (12,), generator=gen).to(getattr(torch, dtype)) for t, n in TASKS.items()}
    topk = {t: torch.stack([torch.randperm(n, generator=gen)[:3] for _ in range(12)]).to(getattr(torch, dtype))
            for t, n in TASKS.items()}
    mc.log_batch(torch.tensor(4), epoch=torch.tensor(0), targets=targets, topk=topk)
    assert mc.flush(5)
    (event,) = service.batches()
    assert event.step == 4 and event.epoch == 0
    for task in TASKS:
        assert event.targets[task].dtype.kind in "iu" and event.topk[task].dtype.kind in "iu"
        np.testing.assert_array_equal(event.targets[task], targets[task].long().numpy())
        np.testing.assert_array_equal(event.topk[task], topk[task].long().numpy())


def test_zero_dim_float_tensors_are_accepted_as_losses(service: FakeService, make_client: Make) -> None:
    gen = torch.Generator().manual_seed(4)
    mc = make_client()
    loss = torch.tensor(1.2345678, dtype=torch.float32)
    task_losses = {"genus": torch.tensor(0.5, dtype=torch.float64), "species": torch.tensor(0.75, dtype=torch.float16)}
    mc.log_batch(1, epoch=0, loss=loss, task_losses=task_losses, **torch_batch(gen))
    mc.log_lr(1, {"backbone": torch.tensor(1e-3, dtype=torch.float64)})
    mc.log_custom(1, {"map": torch.tensor(0.25)})
    assert mc.flush(5)
    (event,) = service.batches()
    assert event.losses == [float(loss)]
    assert event.task_losses == {"genus": [0.5], "species": [0.75]}
    scalars = {e.kind: e.values for e in service.events() if hasattr(e, "values")}
    assert scalars == {"lr": {"backbone": 1e-3}, "custom": {"map": 0.25}}


def test_tensors_requiring_grad_are_detached(service: FakeService, make_client: Make) -> None:
    gen = torch.Generator().manual_seed(6)
    mc = make_client()
    batch = torch_batch(gen, requires_grad=True)
    weights = torch.ones(16, requires_grad=True)
    logits = {t: v * 1.0 for t, v in batch["logits"].items()}  # non-leaf, part of a graph
    loss = sum(torch.nn.functional.cross_entropy(logits[t], batch["targets"][t]) for t in TASKS)
    mc.log_batch(1, epoch=0, loss=loss, task_losses={"genus": loss * 0.5}, targets=batch["targets"],
                 logits=logits, sample_losses=weights * 2.0)
    assert mc.flush(5)
    (event,) = service.batches()
    assert event.losses == [float(loss.detach())]
    np.testing.assert_array_equal(event.sample_losses, np.full(16, 2.0))
    for task in TASKS:
        np.testing.assert_array_equal(event.topk[task], torch.topk(logits[task].detach(), 3, dim=1).indices.numpy())
    loss.backward()  # the caller's graph is untouched by the client
    assert all(v.grad is not None for v in batch["logits"].values())


GRAD_LOSS_SCRIPT = """
import warnings
import torch
from client import MetricsClient
warnings.simplefilter("error")
mc = MetricsClient("http://127.0.0.1:9", "exp", rank=0, world_size=1, tasks={"a": 3}, total_steps=10)
loss = torch.tensor(0.5, requires_grad=True) * 2.0
mc.log_batch(1, epoch=0, loss=loss, task_losses={"a": loss}, targets={"a": [1]}, topk={"a": [[0, 1, 2]]})
mc.close(0.1)
"""


def test_a_loss_requiring_grad_is_taken_without_a_warning() -> None:
    # torch warns once per process: a fresh interpreter sees it whatever ran before
    done = subprocess.run([sys.executable, "-c", GRAD_LOSS_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------ state_dict in a torch checkpoint


class RichSnapshotService(FakeService):
    """Answers checkpoints with a snapshot holding every JSON value kind a real one holds."""

    def _checkpoint(self, run_id: str, ckpt: str, wait_s: float) -> httpx.Response:
        reply = super()._checkpoint(run_id, ckpt, wait_s)
        if reply.status_code != 200:
            return reply
        snapshot = reply.json()
        snapshot["state"] = {"loss_fx": "0x1f3a" * 40, "n": 2**62, "big": 10**40, "t_min": None,
                             "mean": 0.1 + 0.2, "tiny": 5e-324, "flag": True, "labels": ["común", "rare"],
                             "nested": [[1, 2.5, None], {"x": []}], "history": {"train/loss": [[1, 0.7]]}}
        return httpx.Response(200, json=snapshot)


@pytest.fixture
def rich_service() -> RichSnapshotService:
    return RichSnapshotService()


def test_state_dict_survives_torch_save_and_a_weights_only_load(rich_service: RichSnapshotService) -> None:
    mc = MetricsClient("http://metrics.test", "exp", rank=0, world_size=1, tasks=TASKS, total_steps=10,
                       transport=rich_service.transport(), flush_interval_s=0.01, clock=FakeClock())
    gen = torch.Generator().manual_seed(8)
    mc.log_batch(1, epoch=0, loss=torch.tensor(0.5), **torch_batch(gen))
    sd = mc.state_dict(timeout_s=5)
    assert builtin_types(sd) <= {dict, list, str, int, float, bool, type(None)}
    checkpoint = {"model": {"w": torch.ones(2)}, "step": 1, "metrics": sd}
    loaded = save_and_load(checkpoint)
    assert loaded["metrics"] == sd
    assert builtin_types(loaded["metrics"]) == builtin_types(sd)
    mc.load_state_dict(loaded["metrics"], timeout_s=5)
    assert rich_service.restores[-1]["snapshot"] == sd["snapshot"]
    mc.close(1)


@pytest.mark.e2e
@pytest.mark.skipif(LiveServer is None, reason="needs the [service] extra")
def test_a_real_snapshot_survives_a_weights_only_load(live_server: Any) -> None:
    gen = torch.Generator().manual_seed(9)
    mc = MetricsClient(live_server.url, "torch-ckpt", rank=0, world_size=1, tasks=TASKS, total_steps=10,
                       config={"METRICS": {"STEP_INTERVAL": 1}}, retry_max_s=0.2)
    batch = torch_batch(gen, size=32)
    for step in (1, 2):
        mc.log_batch(step, epoch=0, loss=torch.tensor(1e300 if step == 1 else 0.5, dtype=torch.float64),
                     task_losses={"genus": torch.tensor(1e-300)}, **batch)
        mc.log_lr(step, {"backbone": torch.tensor(1e-3)})
    sd = mc.state_dict(timeout_s=30)
    loaded = save_and_load({"metrics": sd})["metrics"]
    assert loaded == sd
    mc.load_state_dict(loaded, timeout_s=30)
    metrics = httpx.get(f"{live_server.url}/v1/runs/torch-ckpt/metrics", timeout=10).json()["metrics"]
    for task in TASKS:  # the service's accuracy is torch's top-1 on the same tensors
        top1 = (batch["logits"][task].argmax(1) == batch["targets"][task]).double().mean().item() * 100
        assert metrics[f"train/acc1_{task}"]["value"] == pytest.approx(top1, rel=1e-12)
    mc.close(5)
