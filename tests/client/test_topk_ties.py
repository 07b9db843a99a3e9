"""Ties in logits go to the lowest class index on numpy, CPU and CUDA tensors alike (issue 14, finding 5).

bf16 logits tie often; ``torch.topk`` orders equal scores as it likes, so without care the
same logits gave different top-1/top-3 through numpy and torch.
"""

from __future__ import annotations

import numpy as np
import pytest

from client._arrays import topk_from_logits, topk_numpy, topk_torch

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Plain loop: sort each row by (-score, index)."""
    rows = [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores.tolist()]
    return np.array(rows, dtype=np.int64)


def tied_logits(seed: int, dtype: torch.dtype, rows: int = 256, classes: int = 40) -> torch.Tensor:
    """Logits with many exact ties: few distinct values, rounded to the dtype."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 6, (rows, classes), generator=gen).float() * 0.25
    if dtype == torch.bfloat16:  # noise that bf16's 8-bit mantissa mostly rounds away, as real logits
        coarse = coarse + torch.randn(rows, classes, generator=gen) * 1e-3
    return coarse.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_torch_topk_equals_numpy_and_the_reference(device: str, dtype: torch.dtype, k: int, seed: int) -> None:
    logits = tied_logits(seed, dtype).to(device)
    exact = logits.float().cpu().numpy()  # bf16/fp16 -> fp32 is exact: the same ties
    assert (exact[:, :, None] == exact[:, None, :]).sum() > exact.size * 2, "the data must tie a lot"
    expected = reference_topk(exact, k)
    np.testing.assert_array_equal(topk_numpy(exact, k), expected)
    np.testing.assert_array_equal(topk_torch(logits, k).cpu().numpy(), expected)
    # what log_batch(logits=...) sends: the same top-3 from the tensor and from its numpy copy
    np.testing.assert_array_equal(topk_from_logits(logits, 40, "logits"), topk_from_logits(exact, 40, "logits"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_that_are_all_equal_or_tied_at_the_boundary(dtype: torch.dtype) -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],
                           [1.0, 2.0, 2.0, 2.0, 2.0],
                           [3.0, 1.0, 3.0, 1.0, 1.0],
                           [-1.0, -1.0, 5.0, -1.0, 5.0]], dtype=dtype)
    expected = [[0, 1, 2], [1, 2, 3], [0, 2, 1], [2, 4, 0]]
    assert topk_from_logits(logits, 5, "logits").tolist() == expected
    assert topk_from_logits(logits.float().numpy(), 5, "logits").tolist() == expected


def test_a_large_batch_of_bf16_logits_gives_the_same_top1_and_top3_through_numpy_and_torch() -> None:
    # the measurement: 3 of 256 top-1 picks and 10 of 256 top-3 sets differed
    gen = torch.Generator().manual_seed(14)
    logits = (torch.randn(256, 1000, generator=gen) * 0.05).to(torch.bfloat16)
    through_torch = topk_from_logits(logits, 1000, "logits")
    through_numpy = topk_from_logits(logits.float().numpy(), 1000, "logits")
    np.testing.assert_array_equal(through_torch, through_numpy)
    np.testing.assert_array_equal(through_torch, reference_topk(logits.float().numpy(), 3))
