"""Reads an offline wandb run file (``run-<id>.wandb``) back, for tests.

Layout (written by wandb-core 0.31; checked against real files): a 7-byte file header
``b":W&B"`` + magic ``0xBEE1`` (uint16, little-endian) + version ``0``, then a LevelDB-style
log in 32 KiB blocks counted from the start of the file (the header sits in block 0).
Each chunk has a 7-byte header: checksum (uint32 LE), length (uint16 LE), type (FULL=1,
FIRST=2, MIDDLE=3, LAST=4). A block tail shorter than a chunk header is zero padding.
Unlike LevelDB, the checksum is plain CRC-32 (zlib's, not CRC-32C) over the type byte and
the data, unmasked. Each reassembled record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
INTERNAL_KEYS = frozenset({"_step", "_timestamp", "_runtime", "_wandb"})


@dataclass
class RunFile:
    """What a run file says: history rows (with ``_step``), final summary, config and alerts (title, text, level)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    alerts: list[tuple[str, str, str]] = field(default_factory=list)

    def steps(self) -> list[int]:
        return [row["_step"] for row in self.rows]

    def user_rows(self) -> dict[int, dict[str, Any]]:
        """Rows by step without wandb's own keys."""
        return {
            row["_step"]: {k: v for k, v in row.items() if k not in INTERNAL_KEYS}
            for row in self.rows
        }


def find_run_file(root: Path, wandb_run_id: str) -> Path:
    """The one ``run-<id>.wandb`` under ``root``."""
    found = sorted(root.rglob(f"run-{wandb_run_id}.wandb"))
    assert len(found) == 1, f"expected one run file for {wandb_run_id} under {root}: {found}"
    return found[0]


def read_run(path: Path) -> RunFile:
    """Parse every record of a run file."""
    result = RunFile()
    for record in iter_records(path.read_bytes()):
        kind = record.WhichOneof("record_type")
        result.kinds.append(str(kind))
        if kind == "history":
            result.rows.append(_history_row(record.history))
        elif kind == "summary":
            _apply(result.summary, record.summary.update, record.summary.remove)
        elif kind == "run":
            _apply(result.config, record.run.config.update, record.run.config.remove)
        elif kind == "config":
            _apply(result.config, record.config.update, record.config.remove)
        elif kind == "alert":
            result.alerts.append((record.alert.title, record.alert.text, record.alert.level))
    return result


def iter_records(data: bytes) -> Iterator[Any]:
    """Reassemble chunks into records, checking header, block layout and checksums."""
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


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _history_row(history: Any) -> dict[str, Any]:
    row = {_key(item): json.loads(item.value_json) for item in history.item}
    row.setdefault("_step", history.step.num)
    return row


def _apply(target: dict[str, Any], updates: Any, removes: Any) -> None:
    for item in updates:
        target[_key(item)] = json.loads(item.value_json)
    for item in removes:
        target.pop(_key(item), None)
