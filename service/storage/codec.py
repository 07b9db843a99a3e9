"""What both stores write and read back: msgpack documents and one run's stored records.

Decoding happens per run: a row that cannot be decoded raises StoreDamaged naming the run
and the row, so one damaged run never keeps the others from loading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from service.core.errors import StoreDamaged
from service.storage.base import StoredRun


def pack(obj: Any) -> bytes:
    """msgpack with bytes kept as bytes."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    """Inverse of ``pack``."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def decode_document(run_id: str, what: str, data: bytes) -> dict[str, Any]:
    """One stored document of ``run_id``; StoreDamaged names ``what`` when it cannot be decoded."""
    try:
        decoded = unpack(bytes(data))
    except Exception as exc:  # msgpack raises several unrelated types for damaged bytes
        raise StoreDamaged(f"run {run_id!r}: {what} cannot be decoded ({type(exc).__name__}: {exc})", run_id) from exc
    if not isinstance(decoded, dict):
        raise StoreDamaged(f"run {run_id!r}: {what} is a {type(decoded).__name__}, not a document", run_id)
    return decoded


def decode_run(run_id: str, image: bytes | None, rows: Iterable[tuple[int, str, bytes]]) -> StoredRun:
    """A run's image and journal rows, decoded."""
    decoded_image = None if image is None else decode_document(run_id, "recovery image", image)
    commands = [(int(i), str(kind), decode_document(run_id, f"journal row {i} ({kind})", body))
                for i, kind, body in rows]
    return StoredRun(run_id, decoded_image, commands)


def load_all(run_ids: Iterable[str], load_run: Callable[[str], StoredRun],
             damaged: tuple[type[Exception], ...] = ()) -> Iterator[StoredRun]:
    """Every run for recovery; a run whose rows cannot be read (StoreDamaged, or ``damaged``
    errors of the database) comes with its ``damage``, and the others still come."""
    caught: tuple[type[Exception], ...] = (StoreDamaged, *damaged)
    for run_id in run_ids:
        try:
            yield load_run(run_id)
        except caught as exc:
            yield StoredRun(run_id, None, [], damage=f"stored rows unreadable ({type(exc).__name__}: {exc})"[:500])
