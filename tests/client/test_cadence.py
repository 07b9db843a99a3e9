"""The sender's default cadence grows with the world size, so a large run does not flood the service
with one-record requests; an explicit ``flush_interval_s`` wins, and ``flush()`` never waits for it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from client import MetricsClient
from client._spec import default_flush_interval
from tests.client.client_fakes import FakeService, random_batch

Make = Callable[..., MetricsClient]


def test_small_runs_keep_a_fifth_of_a_second_and_large_ones_post_at_most_256_requests_a_second() -> None:
    sizes = list(range(1, 4097))
    intervals = [default_flush_interval(n) for n in sizes]
    assert all(0.2 <= s <= 5.0 for s in intervals)
    assert all(a <= b for a, b in itertools.pairwise(intervals))  # never shorter for more ranks
    assert all(s == 0.2 for n, s in zip(sizes, intervals, strict=True) if n <= 51)  # ordinary jobs: unchanged
    # every rank posts once an interval: the whole run's request rate stays within budget up to the cap
    assert all(n / s <= 256 + 1e-9 for n, s in zip(sizes, intervals, strict=True) if n <= 1280)
    assert default_flush_interval(1024) == pytest.approx(4.0)


@pytest.mark.parametrize(("world_size", "given", "expected"), [
    (1, None, 0.2), (1024, None, 4.0), (1024, 0.5, 0.5), (8, 2.0, 2.0),
])
def test_the_client_uses_the_default_for_its_world_size_unless_given_one(
    make_client: Make, world_size: int, given: float | None, expected: float
) -> None:
    mc = make_client(world_size=world_size, rank=world_size - 1, flush_interval_s=given)
    assert mc.flush_interval_s == pytest.approx(expected)
    assert mc._worker._cfg.flush_interval_s == pytest.approx(expected)  # what the sender thread waits


def test_flush_delivers_at_once_even_with_a_long_default_cadence(service: FakeService, make_client: Make) -> None:
    mc = make_client(world_size=1024, rank=7, flush_interval_s=None)
    assert mc.flush_interval_s == pytest.approx(4.0)
    batch = random_batch(np.random.default_rng(5), 16)
    for step in range(3):
        mc.log_batch(step, epoch=0, loss=1.0, **batch)
    assert mc.flush(timeout_s=2.0)  # the sender is woken, not left to its 4 s wait
    assert [b.step for b in service.batches()] == [0, 1, 2]
