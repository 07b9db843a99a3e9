"""Sessions and event deliveries (the hot path)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import ValidationError

from client._wire import (
    JSON_TYPE,
    MSGPACK_TYPE,
    BatchBlock,
    BatchEvent,
    Event,
    WireError,
    decode_events,
    record_count,
    unpack_body,
)
from service.api.deps import HostDep, SettingsDep
from service.api.errors import BodyTooLarge
from service.api.schemas import ERRORS, Ack, Delivery, SessionCreate, SessionOut
from service.core.errors import InvalidInput, ServiceError
from service.runtime.host import Delivery as HostDelivery
from service.runtime.host import RunHost
from service.settings import Settings

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["ingest"], responses=ERRORS)

_BODY_DOC = {"requestBody": {"required": True, "content": {
    JSON_TYPE: {"schema": Delivery.model_json_schema()},
    MSGPACK_TYPE: {"schema": {"type": "string", "format": "binary"}},
}}}


@router.post("/sessions", response_model=SessionOut)
async def open_session(run_id: str, body: SessionCreate, host: HostDep) -> dict[str, Any]:
    """Open a session for a rank; older sessions of that rank are fenced."""
    return await to_thread.run_sync(host.open_session, run_id, body.rank)


@router.post("/events", response_model=Ack, openapi_extra=_BODY_DOC)
async def post_events(run_id: str, request: Request, host: HostDep, settings: SettingsDep) -> dict[str, int]:
    """Deliver events exactly once; the reply acknowledges them as durable.

    The service answers these with ``service.api.fast_ingest`` (the same steps without the
    framework's per-request work); this route documents the endpoint and is its reference.
    """
    if not host.holds(run_id):  # refuse unknown runs before reading the body; a replica may take the
        await to_thread.run_sync(host.get, run_id)  # run over first (database I/O: off the event loop)
    raw = await request.body()  # BodyLimit (middleware) refuses it past max_body_bytes while it streams
    content_type = request.headers.get("content-type", JSON_TYPE)
    return await to_thread.run_sync(ingest_delivery, host, settings, run_id, raw, content_type)


def ingest_delivery(host: RunHost, settings: Settings, run_id: str, raw: bytes,
                    content_type: str) -> dict[str, int]:
    """Decode a delivery body and ingest it (in one worker thread: the append to the store blocks)."""
    delivery, events = decode_delivery(raw, content_type, settings)
    return host.ingest(run_id, delivery.session, delivery.seq, events, (raw, content_type))


def ingest_group(host: RunHost, settings: Settings, run_id: str,
                 posted: Sequence[tuple[bytes, str]]) -> list[dict[str, int] | ServiceError | WireError]:
    """Decode deliveries of one run (each body with its content type) and ingest them with one
    journal transaction (``RunHost.ingest_many``), in one worker thread. A body that does not
    decode gets its own error; the others go ahead. Returns each delivery's reply or error;
    raises what fails the whole group (the store)."""
    results: list[dict[str, int] | ServiceError | WireError | None] = []
    deliveries: list[HostDelivery] = []
    for raw, content_type in posted:
        try:
            delivery, events = decode_delivery(raw, content_type, settings)
        except (ServiceError, WireError) as exc:
            results.append(exc)
            continue
        results.append(None)
        deliveries.append((delivery.session, delivery.seq, events, (raw, content_type)))
    replies = iter(host.ingest_many(run_id, deliveries) if deliveries else ())
    return [next(replies) if result is None else result for result in results]


def decode_delivery(raw: bytes, content_type: str, settings: Settings) -> tuple[Delivery, list[Event]]:
    """A delivery body decoded and checked against the limits; raises the domain's errors."""
    if not content_type.startswith((JSON_TYPE, MSGPACK_TYPE)):
        raise InvalidInput(f"content-type: expected {JSON_TYPE} or {MSGPACK_TYPE}, got {content_type!r}")
    obj = unpack_body(raw, content_type, settings.max_decoded_bytes)
    if not isinstance(obj, dict):
        raise InvalidInput(f"body: expected an object, got {type(obj).__name__}")
    events_raw = obj.get("events")
    if isinstance(events_raw, list) and len(events_raw) > settings.max_events_per_request:
        raise BodyTooLarge(
            f"events: {len(events_raw)} events exceed the limit of {settings.max_events_per_request} "
            "(max_events_per_request)")
    try:
        delivery = Delivery.model_validate({**obj, "events": []})
    except ValidationError as exc:
        raise InvalidInput(_describe(exc)) from exc
    events = decode_events(events_raw)
    for i, event in enumerate(events):
        largest = int(event.size.max()) if isinstance(event, BatchBlock) else \
            event.batch_size if isinstance(event, BatchEvent) else 0
        if largest > settings.max_samples_per_record:
            raise BodyTooLarge(f"events[{i}]: {largest} samples in a record exceed the limit of "
                               f"{settings.max_samples_per_record} (max_samples_per_record)")
    records = record_count(events)
    if records > settings.max_events_per_request:
        raise BodyTooLarge(f"events: {records} records exceed the limit of {settings.max_events_per_request} "
                           "(max_events_per_request)")
    return delivery, events


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
