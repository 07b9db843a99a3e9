"""HTTP to the service: one ``httpx.Client``, httpx errors translated once, here.

``Transport.request`` returns a ``Reply`` for every HTTP answer (the caller decides what a
status means for it) and raises ``ServiceUnavailable`` only when no answer arrived.
``Reply.json`` turns an error answer into the matching exception of ``client._errors``.

Several replicas (DESIGN §10): ``base_url`` may list replica URLs separated by commas. A
replica that does not own the run answers 307 with the owner's URL: the transport follows
it and keeps sending there. When the current URL does not answer, the next attempt goes to
the next URL of the list (the run's owner may have died; another replica takes it over).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from client._errors import ClientError, ServiceRejected, ServiceUnavailable, SessionFenced
from client._wire import JSON_TYPE, MSGPACK_TYPE, pack_body

TOKEN_ENV = "LINNAEUS_METRICS_TOKEN"
USER_AGENT = "linnaeus-metrics-client/0.1"
TRANSIENT_STATUS = frozenset({408, 429})
REDIRECT_STATUS = frozenset({307, 308})
MAX_REDIRECTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """An HTTP answer of the service: status and parsed JSON body (None if not JSON)."""

    status_code: int
    payload: Any

    @property
    def ok(self) -> bool:
        """The request succeeded (2xx)."""
        return 200 <= self.status_code < 300

    @property
    def transient(self) -> bool:
        """Repeating the same request later may succeed (5xx, 408, 429)."""
        return self.status_code >= 500 or self.status_code in TRANSIENT_STATUS

    @property
    def error_type(self) -> str:
        """The ``type`` field of an error body, or ``http_<status>``."""
        value = self.payload.get("type") if isinstance(self.payload, Mapping) else None
        return str(value) if value else f"http_{self.status_code}"

    @property
    def detail(self) -> str:
        """The ``detail`` field of an error body, or the body itself."""
        value = self.payload.get("detail") if isinstance(self.payload, Mapping) else self.payload
        return str(value) if value is not None else "(no detail)"

    def error(self) -> ClientError:
        """The exception an error answer stands for."""
        if self.transient:
            return ServiceUnavailable(
                f"service answered {self.status_code} {self.error_type}: {self.detail}",
                self.status_code,
            )
        kind = SessionFenced if self.error_type == "session_fenced" else ServiceRejected
        return kind(self.status_code, self.error_type, self.detail, self.payload)

    def json(self) -> Any:
        """The body of a successful answer; raises the matching ClientError otherwise."""
        if not self.ok:
            raise self.error()
        return self.payload


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (each delay in [half, full] of the step)."""

    initial_s: float
    max_s: float
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        step = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return step * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self.failures = 0


class Transport:
    """The client's connection to the service.

    Args:
        base_url: the service root, e.g. ``http://metrics:8000``, or several replicas' roots
            separated by commas.
        token: bearer token; defaults to the ``LINNAEUS_METRICS_TOKEN`` environment variable.
        binary: send event bodies as msgpack (True) or JSON (False).
        timeout_s: timeout of one request.
        transport: an ``httpx.BaseTransport`` to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        binary: bool = True,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.urls = [u.strip().rstrip("/") for u in base_url.split(",")]
        self.base_url = self.urls[0]
        self._index = 0
        self.binary = binary
        self.timeout_s = timeout_s
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._injected = transport
        self._lock = threading.Lock()
        self._closed = False
        self._client: httpx.Client | None = self._new_client()

    def _new_client(self) -> httpx.Client:
        headers = {"User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return httpx.Client(
            headers=headers,
            timeout=self.timeout_s,
            transport=self._injected,
        )

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the client's connection to the service is closed")
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """Send a JSON request; raises ServiceUnavailable when no answer arrives."""
        return self._send(
            path,
            lambda http, url: http.request(
                method, url, json=json, params=params, timeout=timeout_s or self.timeout_s
            ),
        )

    def post_events(self, path: str, body: Mapping[str, Any]) -> Reply:
        """POST a delivery body (events already encoded) as msgpack or JSON."""
        content = pack_body(body, self.binary)
        headers = {"Content-Type": MSGPACK_TYPE if self.binary else JSON_TYPE}
        return self._send(path, lambda http, url: http.post(url, content=content, headers=headers))

    def call(self, method: str, path: str, *, json: Any = None) -> Any:
        """Send a JSON request and return the answer's body; raise on any error."""
        return self.request(method, path, json=json).json()

    def _send(self, path: str, send: Callable[[httpx.Client, str], httpx.Response]) -> Reply:
        for _ in range(MAX_REDIRECTS + 1):
            base = self.base_url
            try:
                response = send(self._http(), base + path)
            except httpx.TimeoutException as exc:
                self._move_on(base)
                raise ServiceUnavailable(f"no answer from {base} in time ({exc!r})") from exc
            except (httpx.HTTPError, RuntimeError) as exc:
                # RuntimeError: httpx refuses requests on a client closed by another thread.
                self._move_on(base)
                raise ServiceUnavailable(f"cannot reach {base} ({exc!r})") from exc
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUS or not location:
                return Reply(response.status_code, _payload(response))
            self.base_url = _owner_root(location, path)  # the run's owner: remembered for what follows
        raise ServiceUnavailable(f"more than {MAX_REDIRECTS} redirects for {path} (last: {self.base_url})")

    def _move_on(self, failed: str) -> None:
        """After no answer from ``failed``: the next listed URL, or back to the list from a followed owner."""
        with self._lock:
            if self.base_url != failed:
                return  # another thread moved on already
            if failed in self.urls:
                self._index = (self.urls.index(failed) + 1) % len(self.urls)
            self.base_url = self.urls[self._index]

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        with self._lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            client.close()

    def abandon(self) -> None:
        """Forget the pool without closing it: in a forked child it belongs to the parent."""
        self._lock = threading.Lock()
        self._client = None


def _owner_root(location: str, path: str) -> str:
    """The root URL in a redirect to ``<owner root><path>[?query]``."""
    url = httpx.URL(location)
    root = url.path.removesuffix(path) if url.path.endswith(path) else ""
    return str(url.copy_with(path=root or "/", query=None, fragment=None)).rstrip("/")


def _payload(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def call_until(deadline: float, backoff: Backoff, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it succeeds, retrying ServiceUnavailable until ``deadline``.

    ``deadline`` is on the ``time.monotonic`` clock; the last ServiceUnavailable is
    re-raised when the next retry would start after it.
    """
    pause = threading.Event()
    while True:
        try:
            return attempt()
        except ServiceUnavailable:
            delay = backoff.next_delay()
            if time.monotonic() + delay >= deadline:
                raise
            pause.wait(delay)
