"""Several replicas: the transport follows a replica's 307 to the run's owner, remembers it,
and moves on to the next listed URL when the one it uses does not answer."""

from __future__ import annotations

import httpx
import pytest

from client._errors import InvalidValue, ServiceUnavailable
from client._spec import check_url
from client._transport import MAX_REDIRECTS, Transport

PATH = "/v1/runs/r/events"


class Replicas:
    """Hosts a, b, c; ``owner`` answers, ``down`` hosts refuse connections, others redirect."""

    def __init__(self, owner: str, down: set[str] | None = None) -> None:
        self.owner, self.down = owner, down or set()
        self.seen: list[tuple[str, str, str, bytes]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, request.method, request.url.path, request.content))
        if host in self.down:
            raise httpx.ConnectError(f"{host} refused", request=request)
        if host != self.owner:
            target = f"http://{self.owner}:8000/prefix{request.url.path}?{request.url.query.decode()}"
            return httpx.Response(307, headers={"location": target})
        return httpx.Response(200, json={"host": host, "query": request.url.query.decode()})


def _transport(replicas: Replicas, urls: str) -> Transport:
    return Transport(urls, transport=httpx.MockTransport(replicas.handle))


def test_a_redirect_is_followed_with_the_same_body_and_remembered() -> None:
    replicas = Replicas(owner="b")
    transport = _transport(replicas, "http://a:8000")
    reply = transport.post_events(PATH, {"session": "s", "seq": 0, "events": []})
    assert reply.ok and reply.payload["host"] == "b"
    (_, method_a, path_a, body_a), (host_b, method_b, path_b, body_b) = replicas.seen
    assert (method_a, method_b, host_b) == ("POST", "POST", "b") and body_a == body_b and body_a
    assert (path_a, path_b) == (PATH, "/prefix" + PATH)
    assert transport.base_url == "http://b:8000/prefix"
    assert transport.request("GET", "/v1/runs/r/checkpoints/1", params={"wait_s": 2}).payload == {
        "host": "b", "query": "wait_s=2"}
    assert [h for h, *_ in replicas.seen] == ["a", "b", "b"]  # straight to the owner from then on


def test_no_answer_moves_on_to_the_next_listed_replica() -> None:
    replicas = Replicas(owner="c", down={"a"})
    transport = _transport(replicas, "http://a:8000, http://b:8000,http://c:8000")
    with pytest.raises(ServiceUnavailable, match="cannot reach http://a:8000"):
        transport.request("GET", "/v1/runs/r")
    assert transport.request("GET", "/v1/runs/r").payload["host"] == "c"  # b sent it on to c
    replicas.down = {"c"}  # the owner dies; b takes the run over
    replicas.owner = "b"
    with pytest.raises(ServiceUnavailable, match="cannot reach http://c:8000/prefix"):
        transport.request("GET", "/v1/runs/r")
    assert transport.request("GET", "/v1/runs/r").payload["host"] == "b"
    assert [h for h, *_ in replicas.seen] == ["a", "b", "c", "c", "b"]


def test_a_redirect_loop_is_unavailable_not_endless() -> None:
    def loop(request: httpx.Request) -> httpx.Response:
        other = "b" if request.url.host == "a" else "a"
        return httpx.Response(307, headers={"location": f"http://{other}:8000{request.url.path}"})

    transport = Transport("http://a:8000", transport=httpx.MockTransport(loop))
    with pytest.raises(ServiceUnavailable, match=f"more than {MAX_REDIRECTS} redirects"):
        transport.request("GET", "/v1/runs/r")


def test_urls_may_be_a_list_or_separated_by_commas() -> None:
    assert check_url(["http://a:1", "http://b:2"]) == "http://a:1,http://b:2"
    assert check_url("http://a:1, http://b:2") == "http://a:1,http://b:2"
    with pytest.raises(InvalidValue, match="url: expected http"):
        check_url(["http://a:1", "ftp://b"])
