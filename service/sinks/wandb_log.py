"""Reads wandb's local run files (``run-<id>.wandb``): what wandb has really written.

After a crash of the service, the wandb sink resumes after the last history step found in
these files (online runs keep the same transaction log locally), so a row lost in the
sink's queue is sent again and a row already written is not sent twice.

Layout (written by wandb-core 0.31; checked against real files): a 7-byte file header
``b":W&B"`` + magic ``0xBEE1`` (uint16, little-endian) + version ``0``, then a LevelDB-style
log in 32 KiB blocks counted from the start of the file (the header sits in block 0).
Each chunk has a 7-byte header: checksum (uint32 LE), length (uint16 LE), type (FULL=1,
FIRST=2, MIDDLE=3, LAST=4). A block tail shorter than a chunk header is zero padding.
Unlike LevelDB, the checksum is plain CRC-32 (zlib's, not CRC-32C) over the type byte and
the data, unmasked. Each reassembled record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

_log = logging.getLogger(__name__)


def iter_records(data: bytes) -> Iterator[Any]:
    """Reassemble chunks into records, checking header, block layout and checksums.

    Raises:
        ValueError: at the first malformed byte (a crash can leave a torn tail: callers that
            read a crashed run's file keep the records before it).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise ValueError(f"not a wandb run file: header {data[:7]!r}")
    pos, pending = len(FILE_HEADER), b""
    while pos < len(data):
        room = BLOCK_SIZE - pos % BLOCK_SIZE
        if room < CHUNK_HEADER.size:
            pos += room
            continue
        if pos + CHUNK_HEADER.size > len(data):
            raise ValueError(f"truncated chunk header at offset {pos}")
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        if len(chunk) != length or CHUNK_HEADER.size + length > room:
            raise ValueError(f"chunk at offset {pos} overruns its block or the file")
        if zlib.crc32(bytes([kind]) + chunk) != checksum:
            raise ValueError(f"checksum mismatch in chunk at offset {pos}")
        pos += CHUNK_HEADER.size + length
        pending += chunk
        if kind in (FULL, LAST):
            record = pb.Record()  # type: ignore[attr-defined]
            record.ParseFromString(pending)
            pending = b""
            yield record
        elif kind not in (FIRST, MIDDLE):
            raise ValueError(f"unknown chunk type {kind} at offset {pos}")


def logged_through(root: Path, wandb_run_id: str) -> int | None:
    """The highest history step of every local file of ``wandb_run_id`` under ``root`` (None: none)."""
    highest: int | None = None
    for path in sorted(root.rglob(f"run-{wandb_run_id}.wandb")):
        for step in _history_steps(path):
            highest = step if highest is None else max(highest, step)
    return highest


def _history_steps(path: Path) -> Iterator[int]:
    try:
        for record in iter_records(path.read_bytes()):
            if record.WhichOneof("record_type") == "history":
                yield int(record.history.step.num)
    except (OSError, ValueError, DecodeError) as exc:  # a torn tail after a crash: the records before it count
        _log.info("wandb file %s: read up to a damaged or torn part (%s)", path, exc)
