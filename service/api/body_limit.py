"""The request body limit on every route, as a pure ASGI middleware (DESIGN §6).

A declared ``Content-Length`` over the limit is refused before a byte of the body is read;
a streamed (chunked) body is counted as it arrives and refused at the first chunk past the
limit. A middleware, not a route helper, so that no route present or future reads a large
body in full: the framework parses JSON bodies before any route code runs.

JSON bodies are also bounded in what they decode to: their values are counted in the raw
chunks as they arrive (``client._wire.json_values``), and a body whose values would take more
than ``max_decoded_bytes`` once parsed is refused before the parser allocates them.
msgpack bodies are bounded where they are decoded (``client._wire.unpack_body``).
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client._wire import MSGPACK_TYPE, DecodedTooLarge, check_decoded_size, json_values

log = logging.getLogger("linnaeus_metrics.api")


class BodyLimit:
    """413 ``body_too_large`` naming ``max_body_bytes`` for any body over ``limit`` bytes, and
    413 ``decoded_too_large`` for a JSON body that would decode to more than ``decoded_limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int, decoded_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.decoded_limit = decoded_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, f"body: {int(declared)} bytes exceed the limit of {self.limit} (max_body_bytes)",
                             "body_too_large")
            return
        headers = dict(scope["headers"])
        json_body = not headers.get(b"content-type", b"").decode("latin-1").startswith(MSGPACK_TYPE)
        await _Limited(self.app, (self.limit, self.decoded_limit if json_body else None), scope, receive, send).run()


class _Limited:
    """One request: counts the body; past the limit it answers 413 itself and tells the app the
    client went away (``http.disconnect``), so the app stops reading and its reply is dropped."""

    def __init__(self, app: ASGIApp, limits: tuple[int, int | None], scope: Scope, receive: Receive,
                 send: Send) -> None:
        self.app, self.scope = app, scope
        self.limit, self.decoded_limit = limits
        self._receive, self._send = receive, send
        self.size = 0
        self.values = 0
        self.refused = False
        self.started = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if not self.refused:
                raise
            # the app failed because we cut its body short; the 413 has been sent
            log.debug("after a refused body: %s: %s", type(exc).__name__, exc)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            refusal = self._count(message.get("body", b""))
            if refusal is not None:
                self.refused = True
                if not self.started:
                    await _too_large(self._send, *refusal)
                return {"type": "http.disconnect"}
        return message

    def _count(self, chunk: bytes) -> tuple[str, str] | None:
        """Why the body is refused once ``chunk`` is in, or None."""
        self.size += len(chunk)
        if self.size > self.limit:
            return f"body: more than {self.limit} bytes (max_body_bytes)", "body_too_large"
        if self.decoded_limit is not None:
            self.values += json_values(chunk) - 1
            try:
                check_decoded_size(self.values, self.decoded_limit)
            except DecodedTooLarge as exc:
                return str(exc), "decoded_too_large"
        return None

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _too_large(send: Send, detail: str, type_: str) -> None:
    body = json.dumps({"type": type_, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
