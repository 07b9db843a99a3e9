"""Bearer-token auth as a pure ASGI middleware: every path but the open ones below.

A middleware (not a router dependency) so that no route, present or future, the OpenAPI
document and /metrics included, can be added without it. Open are the probes and the
dashboard's page and static assets, which carry no run data: the page asks the user for
the token and sends it with every data request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
#: The dashboard's static assets (``service.api.routes.dashboard.ASSETS_PREFIX``).
OPEN_PREFIXES = ("/dashboard/",)


class BearerAuth:
    """401 without a bearer token, 403 for a wrong one; tokens compared in constant time."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self._tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._tokens or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        failure = self._check(dict(scope["headers"]).get(b"authorization"))
        if failure is None:
            await self.app(scope, receive, send)
            return
        await _reject(send, *failure)

    def _check(self, header: bytes | None) -> tuple[int, str, str] | None:
        if not header or not header.lower().startswith(b"bearer "):
            return 401, "unauthorized", "Authorization: a bearer token is required"
        given = header[7:].strip()
        # compare against every token so timing does not reveal which one (or how many) matched
        matched = [hmac.compare_digest(given, token) for token in self._tokens]
        if not any(matched):
            return 403, "forbidden", "Authorization: the bearer token is not valid"
        return None


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _reject(send: Send, status: int, type_: str, detail: str) -> None:
    body = json.dumps({"type": type_, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
