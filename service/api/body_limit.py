"""The request body limit on every route, as a pure ASGI middleware (DESIGN §6).

A declared ``Content-Length`` over the limit is refused before a byte of the body is read;
a streamed (chunked) body is counted as it arrives and refused at the first chunk past the
limit. A middleware, not a route helper, so that no route present or future reads a large
body in full: the framework parses JSON bodies before any route code runs.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("linnaeus_metrics.api")


class BodyLimit:
    """413 ``body_too_large`` naming ``max_body_bytes`` for any body over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, f"body: {int(declared)} bytes exceed the limit of {self.limit} (max_body_bytes)")
            return
        await _Limited(self.app, self.limit, scope, receive, send).run()


class _Limited:
    """One request: counts the body; past the limit it answers 413 itself and tells the app the
    client went away (``http.disconnect``), so the app stops reading and its reply is dropped."""

    def __init__(self, app: ASGIApp, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        self.app, self.limit, self.scope = app, limit, scope
        self._receive, self._send = receive, send
        self.size = 0
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
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.refused = True
                if not self.started:
                    await _too_large(self._send, f"body: more than {self.limit} bytes (max_body_bytes)")
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _too_large(send: Send, detail: str) -> None:
    body = json.dumps({"type": "body_too_large", "detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
