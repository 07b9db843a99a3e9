"""The metrics book's stored forms: lists in snapshots (JSON), bytes in recovery images; both load the same."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.core.metrics_book import MetricsBook
from service.storage.codec import pack, unpack


def _book(seed: int) -> MetricsBook:
    rng = np.random.default_rng(seed)
    book = MetricsBook(max_points=64)
    for step in range(1, 300):
        keys = [k for k in ("train/loss", "train/acc1_a", "val/loss") if rng.random() < 0.7]
        book.record(step, {k: float(rng.normal()) for k in keys})
    book.offer_best("final_val_loss", 0.5, False)
    return book


def _plain(book: MetricsBook) -> dict[str, object]:
    return {"latest": book.latest, "best": book.best, "max_points": book.max_points,
            "history": {k: (list(s), list(v)) for k, (s, v) in book.history.items()}}


@pytest.mark.parametrize("seed", range(3))
def test_an_image_keeps_history_as_bytes_and_loads_the_same_book_as_a_snapshot(seed: int) -> None:
    book = _book(seed)
    image = unpack(pack(book.to_dict(binary=True)))  # as a recovery image goes through the store
    snapshot = json.loads(json.dumps(book.to_dict()))  # as a snapshot goes through HTTP
    assert all(isinstance(s, bytes) and isinstance(v, bytes) for s, v in image["history"].values())
    assert all(isinstance(s, list) for s, _ in snapshot["history"].values())
    assert _plain(MetricsBook.from_dict(image)) == _plain(MetricsBook.from_dict(snapshot)) == _plain(book)


def test_a_damaged_binary_history_is_refused_naming_the_key() -> None:
    image = _book(7).to_dict(binary=True)
    steps, values = image["history"]["train/loss"]
    image["history"]["train/loss"] = [steps[:-3], values]  # not a whole number of int64
    with pytest.raises(ValueError):
        MetricsBook.from_dict(image)
    image["history"]["train/loss"] = [steps[:-8], values]  # one step short of the values
    with pytest.raises(ValueError, match="train/loss"):
        MetricsBook.from_dict(image)
