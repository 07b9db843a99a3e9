"""Pydantic models of the HTTP bodies (the OpenAPI document is generated from them).

Events inside a delivery are decoded by ``client._wire`` (the one wire definition), so
JSON and msgpack bodies go through the same checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from client import _rules as rules

# Documentation and a first gate; the full rules (client._rules) run in service.core.spec.
RUN_ID = rules.json_pattern(rules.RUN_ID_CHARS)
NAME = rules.json_pattern(rules.NAME_CHARS)


class Strict(BaseModel):
    """Unknown fields are errors, numbers are not coerced from strings."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TaskModel(Strict):
    name: str = Field(pattern=NAME)
    num_classes: int = Field(ge=1, le=rules.MAX_CLASSES)
    null_index: int = Field(0, ge=0, le=rules.MAX_CLASSES - 1)


class RunCreate(Strict):
    run_id: str = Field(pattern=RUN_ID)
    world_size: int = Field(ge=1, le=rules.MAX_WORLD_SIZE)
    total_steps: int = Field(ge=1, le=rules.MAX_STEP)
    tasks: list[TaskModel] = Field(min_length=1, max_length=rules.MAX_TASKS)
    subsets: dict[str, list[str]] | None = Field(None, max_length=rules.MAX_FAMILIES)
    config: dict[str, Any] | None = None


class SessionCreate(Strict):
    rank: int = Field(ge=0)


class SessionOut(BaseModel):
    session: str
    rank: int
    next_seq: int


class Delivery(Strict):
    """``seq`` numbers the first event; the others follow."""

    session: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, le=2**62)
    events: list[dict[str, Any]]


class Ack(BaseModel):
    """Every event with seq < ``acked_seq`` is durable; ``ignored`` events came from a
    session that has not loaded the run's current snapshot (DESIGN §3b)."""

    acked_seq: int
    applied: int
    ignored: int


class RestoreBody(Strict):
    session: str = Field(min_length=1, max_length=64)
    snapshot: dict[str, Any]


class ErrorOut(BaseModel):
    type: str
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422)
}
