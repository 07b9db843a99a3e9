"""User arrays (numpy arrays, lists, torch tensors) to numpy, and logits to top-k.

torch is never imported here: a value is a tensor only if torch is already loaded and the
value is one of its tensors. Top-k from logits uses k = 3 and sorts each row by score,
highest first (column 0 is the argmax), and exactly equal scores go to the lowest class
index, for numpy input (and lists) and torch tensors alike, so the same logits give the
same top-k whichever way they arrive (bf16 logits tie often). numpy: ``argpartition``
picks the candidates and only rows with a tie at the k-th score are fully sorted. torch:
everything runs on the tensor's device and only the int64 indices are copied to the host;
``torch.topk`` orders ties as it likes (on CPU as on CUDA), so its candidates are re-sorted
by (score, index) and rows with a tie at the k-th score are sorted in full with a stable
sort. NaN scores are not checked.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from client._errors import InvalidRecord, InvalidType

TOPK = 3


def is_tensor(value: Any) -> bool:
    """True if ``value`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: Any, name: str) -> np.ndarray:
    """``value`` as a numpy array (tensors are detached and copied to the host)."""
    if is_tensor(value):
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        return np.asarray(tensor.cpu().numpy())
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise InvalidRecord(f"{name}: not a rectangular array ({exc})") from exc
    except TypeError as exc:
        raise InvalidType(f"{name}: expected an array, got {type(value).__name__}") from exc


def class_indices(value: Any, name: str, ndim: int) -> np.ndarray:
    """An int64 copy of an array of class indices with ``ndim`` dimensions."""
    array = to_numpy(value, name)
    if array.dtype.kind not in "iu":
        raise InvalidType(f"{name}: expected integer class indices, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise InvalidRecord(f"{name}: expected a {ndim}-d array, got shape {list(array.shape)}")
    return array.astype(np.int64)  # a copy: callers often reuse their buffers


def finite_floats(value: Any, name: str, size: int) -> np.ndarray:
    """A float64 copy of a 1-d array of ``size`` finite numbers."""
    array = to_numpy(value, name)
    if array.dtype.kind not in "iuf":
        raise InvalidType(f"{name}: expected numbers, got dtype {array.dtype}")
    if array.shape != (size,):
        raise InvalidRecord(f"{name}: expected shape [{size}], got {list(array.shape)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array)][0]
        raise InvalidRecord(f"{name}: values must be finite, got {bad}")
    return array


def topk_from_logits(logits: Any, num_classes: int, name: str) -> np.ndarray:
    """The top-k class indices per row of ``logits`` ([B, num_classes]) as int64 [B, k].

    k is 3, or every class for a task with fewer (its top-3 accuracy is then 100 %).
    """
    k = min(TOPK, num_classes)
    if is_tensor(logits):
        _check_logits_shape(tuple(logits.shape), num_classes, name)
        if logits.dtype.is_complex or str(logits.dtype) == "torch.bool":
            raise InvalidType(f"{name}: expected real scores, got dtype {logits.dtype}")
        return _topk_torch(logits, k)
    array = to_numpy(logits, name)
    if array.dtype.kind not in "iuf":
        raise InvalidType(f"{name}: expected real scores, got dtype {array.dtype}")
    _check_logits_shape(array.shape, num_classes, name)
    return topk_numpy(array, k)


def _check_logits_shape(shape: tuple[int, ...], num_classes: int, name: str) -> None:
    if len(shape) != 2 or shape[1] != num_classes:
        raise InvalidRecord(f"{name}: expected shape [batch, {num_classes}], got {list(shape)}")


def _topk_torch(logits: Any, k: int) -> np.ndarray:
    return np.asarray(topk_torch(logits, k).to("cpu").numpy(), dtype=np.int64)


def topk_torch(logits: Any, k: int) -> Any:
    """Per row, the indices of the ``k`` highest scores, highest first, ties to the lowest index.

    On the tensor's device; returns an int64 tensor [B, k].
    """
    import torch

    scores = logits.detach()
    values, candidates = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    # candidates by index, then a stable sort by score: equal scores keep the lower index first
    candidates, by_index = torch.sort(candidates, dim=1)
    order = torch.sort(torch.gather(values, 1, by_index), dim=1, descending=True, stable=True).indices
    top = torch.gather(candidates, 1, order)
    kth = values[:, k - 1 :]
    tied = ((scores >= kth).sum(dim=1) > k).nonzero().flatten()  # a tie at the k-th score
    if tied.numel():
        top[tied] = torch.sort(scores[tied], dim=1, descending=True, stable=True).indices[:, :k]
    return top


def topk_numpy(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` highest scores, highest first, ties to the lowest index."""
    neg = -scores.astype(np.float64, copy=False)
    candidates = np.argpartition(neg, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(neg, candidates, axis=1)
    order = np.lexsort((candidates, values), axis=1)
    top = np.take_along_axis(candidates, order, axis=1)
    kth = values.max(axis=1, keepdims=True)
    tied = np.flatnonzero((neg <= kth).sum(axis=1) > k)  # a tie at the k-th score: pick by index
    for row in tied:
        top[row] = np.argsort(neg[row], kind="stable")[:k]
    return top.astype(np.int64, copy=False)
