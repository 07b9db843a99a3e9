"""Exact sums of float64 values as fixed-point Python integers.

Every finite float64 is an integer multiple of 2**-1074, so ``x * 2**SCALE_BITS`` is an
exact integer. Sums of such integers are exact, hence associative and commutative: the
order in which ranks arrive can never change a loss by even one ulp. Ratios are rounded
once, on read (``int / int`` in Python is correctly rounded).

>>> total = fixed(0.1) + fixed(0.2)
>>> ratio(total, 1) == 0.30000000000000004  # one correctly rounded result of 0.1 + 0.2
True
>>> fixed_sum(np.array([0.1, 0.2, -0.1])) == fixed(0.1) + fixed(0.2) - fixed(0.1)
True
"""

from __future__ import annotations

import numpy as np

SCALE_BITS = 1126  # 1074 (smallest subnormal) + 52 (mantissa shift below) keeps shifts >= 0
_MANTISSA_BITS = 53
_SPLIT_BITS = 26


def fixed(value: float) -> int:
    """``value * 2**SCALE_BITS`` exactly (a float's denominator is a power of two: a shift, no division)."""
    numerator, denominator = float(value).as_integer_ratio()
    return numerator << (SCALE_BITS + 1 - denominator.bit_length())


def ratio(total: int, count: int) -> float:
    """``total / (count * 2**SCALE_BITS)``, correctly rounded."""
    return total / (count << SCALE_BITS)


def fixed_sum(values: np.ndarray) -> int:
    """Exact fixed-point sum of a float64 array, without a per-element Python loop."""
    return fixed_sums_by_label(values, np.zeros(values.shape[0], dtype=np.int64), 1)[0]


def fixed_sums_by_label(values: np.ndarray, labels: np.ndarray, n_labels: int) -> list[int]:
    """Exact fixed-point sums of ``values`` grouped by integer ``labels`` in [0, n_labels)."""
    mantissa, exponent = np.frexp(values.astype(np.float64, copy=False))
    ints = (mantissa * float(1 << _MANTISSA_BITS)).astype(np.int64)
    shifts = exponent.astype(np.int64) - _MANTISSA_BITS + SCALE_BITS
    unique_shifts, shift_index = np.unique(shifts, return_inverse=True)
    key = labels.astype(np.int64) * len(unique_shifts) + shift_index.reshape(-1)
    size = n_labels * len(unique_shifts)
    # Split each 53-bit mantissa so float64 bincount sums stay exact (< 2**53) for 2**26 items.
    high = np.bincount(key, weights=(ints >> _SPLIT_BITS).astype(np.float64), minlength=size)
    low = np.bincount(key, weights=(ints & ((1 << _SPLIT_BITS) - 1)).astype(np.float64), minlength=size)
    sums = [0] * n_labels
    for k in np.flatnonzero((high != 0) | (low != 0)).tolist():
        label, s = divmod(k, len(unique_shifts))
        part = (int(high[k]) << _SPLIT_BITS) + int(low[k])
        sums[label] += part << int(unique_shifts[s])
    return sums
