"""logits -> top-3: per row, classes by score descending (numpy: ties to the lowest index)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from client import MetricsClient
from client._arrays import topk_numpy
from tests.client.client_fakes import FakeService

Make = Callable[..., MetricsClient]


def reference_topk(scores: np.ndarray, k: int = 3) -> np.ndarray:
    rows = [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores.tolist()]
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_topk_matches_a_plain_loop_on_continuous_scores(seed: int) -> None:
    scores = np.random.default_rng(seed).normal(size=(64, 17))
    np.testing.assert_array_equal(topk_numpy(scores, 3), reference_topk(scores))


@pytest.mark.parametrize("seed", range(5))
def test_topk_breaks_ties_by_the_lowest_index(seed: int) -> None:
    scores = np.random.default_rng(seed).integers(0, 3, size=(64, 9)).astype(np.float32)
    np.testing.assert_array_equal(topk_numpy(scores, 3), reference_topk(scores))


def test_topk_of_constant_and_integer_scores() -> None:
    np.testing.assert_array_equal(topk_numpy(np.zeros((2, 5)), 3), [[0, 1, 2], [0, 1, 2]])
    ints = np.array([[1, 9, 9, 3], [7, 7, 7, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(topk_numpy(ints, 3), reference_topk(ints.astype(float)))


def test_log_batch_with_logits_sends_the_reference_topk(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    rng = np.random.default_rng(11)
    logits = {"genus": rng.normal(size=(32, 5)), "species": rng.normal(size=(32, 10)).tolist()}
    targets = {"genus": rng.integers(0, 5, 32), "species": rng.integers(0, 10, 32)}
    mc.log_batch(1, epoch=0, targets=targets, logits=logits)
    assert mc.flush(5)
    (event,) = service.batches()
    np.testing.assert_array_equal(event.topk["genus"], reference_topk(logits["genus"]))
    np.testing.assert_array_equal(
        event.topk["species"], reference_topk(np.array(logits["species"]))
    )


def test_a_task_with_fewer_than_three_classes_sends_every_class(service: FakeService, make_client: Make) -> None:
    mc = make_client(tasks={"binary": 2})
    mc.log_batch(1, epoch=0, targets={"binary": [0, 1]}, logits={"binary": [[0.1, 0.9], [0.5, 0.2]]})
    assert mc.flush(5)
    (event,) = service.batches()
    assert event.topk["binary"].tolist() == [[1, 0], [0, 1]]


def test_torch_tensors_are_accepted(service: FakeService, make_client: Make) -> None:
    torch = pytest.importorskip("torch")
    mc = make_client()
    gen = torch.Generator().manual_seed(3)
    logits = {
        "genus": torch.randn(16, 5, generator=gen),
        "species": torch.randn(16, 10, generator=gen),
    }
    targets = {
        "genus": torch.randint(0, 5, (16,), generator=gen),
        "species": torch.randint(0, 10, (16,), generator=gen),
    }
    mc.log_batch(
        1,
        epoch=0,
        loss=torch.tensor(0.25),
        targets=targets,
        logits=logits,
        sample_losses=torch.rand(16, generator=gen),
    )
    assert mc.flush(5)
    (event,) = service.batches()
    for task, scores in logits.items():
        np.testing.assert_array_equal(event.topk[task], reference_topk(scores.numpy()))
        np.testing.assert_array_equal(event.targets[task], targets[task].numpy())
    assert event.losses == [0.25]


def test_torch_logits_take_topk_on_the_device_and_move_only_indices(
    service: FakeService, make_client: Make
) -> None:
    torch = pytest.importorskip("torch")
    moved: list[tuple[str, str, tuple[int, ...]]] = []

    class Spy(torch.Tensor):  # type: ignore[misc]
        """Records every copy to the host (the device boundary) made from it or its results."""

        @classmethod
        def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = getattr(func, "__name__", str(func))
            if name in ("cpu", "to", "numpy", "tolist", "item", "__array__"):
                moved.append((name, str(args[0].dtype), tuple(args[0].shape)))
            return super().__torch_function__(func, types, args, kwargs or {})

    rng = np.random.default_rng(5)
    scores = {"genus": rng.normal(size=(8, 5)), "species": rng.normal(size=(8, 10))}
    mc = make_client()
    mc.log_batch(
        1,
        epoch=0,
        targets={"genus": rng.integers(0, 5, 8), "species": rng.integers(0, 10, 8)},
        logits={t: torch.tensor(s).as_subclass(Spy) for t, s in scores.items()},
    )
    assert moved and all(dtype == "torch.int64" and shape == (8, 3) for _, dtype, shape in moved), moved
    assert mc.flush(5)
    (event,) = service.batches()
    for task, s in scores.items():
        np.testing.assert_array_equal(event.topk[task], reference_topk(s))
