"""A small reader of server-sent events over an httpx streaming response (tests only)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sse:
    """One message: ``id`` (None when absent), ``event`` and the decoded ``data``."""

    id: int | None
    event: str
    data: dict[str, Any]


class SseReader:
    """Messages and comment lines of one response, read as they arrive (the client's read timeout bounds each)."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines: Iterator[str] = response.iter_lines()
        self.comments: list[str] = []

    def next(self) -> Sse:
        """The next message (comments seen on the way are kept in ``comments``)."""
        fields: dict[str, str] = {}
        for line in self._lines:
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            elif fields:
                return Sse(int(fields["id"]) if "id" in fields else None, fields["event"], json.loads(fields["data"]))
        raise EOFError("the stream ended")

    def take(self, count: int) -> list[Sse]:
        """The next ``count`` messages."""
        return [self.next() for _ in range(count)]

    def comment(self) -> str:
        """The next comment line (messages on the way are an error)."""
        for line in self._lines:
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                return self.comments[-1]
            assert not line, f"expected a comment, got {line!r}"
        raise EOFError("the stream ended")
