"""The page's own logic, run in the browser: the SSE reader and the key fallback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from service.core.emission import MetricId
from service.core.naming import core_metric, scalar_metric, window_metric
from tests.dashboard.conftest import Console, Service, serve

pytestmark = pytest.mark.e2e
TASKS = ["genus", "taxa_L10", "species"]

READ = """async (chunks) => {
  const { Stream } = await import("/dashboard/js/sse.js");
  const got = [];
  const s = new Stream("/unused", (type, data, id) => got.push([type, data, id]), () => {});
  const bytes = chunks.map((x) => new TextEncoder().encode(x));
  const body = new ReadableStream({ start(c) { for (const b of bytes) c.enqueue(b); c.close(); } });
  await s._read(body);
  return got;
}"""

RECONNECT = """async () => {
  const { Stream } = await import("/dashboard/js/sse.js");
  const calls = [], got = [];
  const replies = ["retry: 10\\nid: 41\\nevent: emission\\ndata: {\\"step\\":1}\\n\\n",
                   "id: 42\\nevent: status\\ndata: {\\"kind\\":\\"ranks\\"}\\n\\n"];
  const realFetch = window.fetch;
  window.fetch = async (path, init) => {
    calls.push(init.headers["Last-Event-ID"] ?? null);
    return new Response(replies.shift() ?? "", { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  await new Promise((resolve) => {
    const s = new Stream("/v1/runs/x/stream", (type, data, id) => {
      got.push([type, id]);
      if (got.length === 2) { s.close(); resolve(); }
    }, () => {}).start();
  });
  window.fetch = realFetch;
  return { calls: calls.slice(0, 2), got };
}"""


@pytest.fixture(scope="module")
def page(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Service, Console]]:
    with serve(tmp_path_factory.mktemp("logic")) as svc:
        page, console = browser.new_page(), Console()
        console.attach(page)
        page.goto(f"{svc.url}/")  # the modules are imported from the page's origin
        page.wait_for_selector("text=No runs yet.")
        yield page, svc, console
        page.close()


def test_sse_reader_handles_split_chunks_crlf_comments_and_multiline_data(page: Any) -> None:
    browser_page, _, console = page
    wire = ("id: 5\r\nevent: emission\r\ndata: {\"step\": 3,\r\ndata:  \"v\": 1}\r\n\r\n"
            ": heartbeat\n\n"
            "id: 6\nevent: alert\ndata:{\"name\":\"x\"}\n\n"
            "event: resync\ndata: {\"reason\": \"gap\"}\n\n"
            "id: 7\nevent: status\ndata: not json\n\n")
    inside_crlf = wire.index("3,\r\n") + 3  # a chunk ends between the \r and \n of a line end
    cuts = [0, 3, 17, inside_crlf, 60, 61, 62, 90, len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(cuts)]
    got = browser_page.evaluate(READ, chunks)
    assert got == [["emission", {"step": 3, "v": 1}, "5"], ["alert", {"name": "x"}, "6"],
                   ["resync", {"reason": "gap"}, "6"]]
    assert console.errors == []


def test_sse_reconnects_with_the_last_event_id(page: Any) -> None:
    browser_page, _, console = page
    result = browser_page.evaluate(RECONNECT)
    assert result["calls"] == [None, "41"]
    assert result["got"] == [["emission", "41"], ["status", "42"]]
    assert console.errors == []


def _identities() -> Iterator[MetricId]:
    suffixes = [f"{stat}_{task}" for stat in ("acc1", "acc3", "loss") for task in TASKS] + [
        "loss", "chain_accuracy", "partial_chain_accuracy"]
    for phase, window, subset, suffix in itertools.product(
            ("train", "val", "val_mask"), ("step", "step_avg", "epoch"), (None, ("rarity", "rare_1")), suffixes):
        if phase == "train" or window == "epoch":
            family, label = subset or (None, None)
            yield window_metric(suffix, phase=phase, window=window, family=family, label=label)
    yield window_metric("samples_per_sec", phase="train", window="step")
    yield window_metric("epoch_duration_sec", phase="train", window="epoch")
    yield window_metric("avg_samples_per_sec", phase="val", window="epoch")
    for kind in ("lr", "pipeline", "gradnorm", "custom"):
        yield scalar_metric(kind, "queue_depths/batch_q")
    yield core_metric("val_acc1", task="taxa_L10")
    yield core_metric("train_loss")
    yield core_metric("global_step")


def test_key_fallback_gives_the_identity_the_service_sends(page: Any) -> None:
    """REST values come without identity: the page derives from the key what the stream would say."""
    browser_page, _, console = page
    ids = list(_identities())
    parsed = browser_page.evaluate("""async ([keys, tasks]) => {
      const { parseKey } = await import("/dashboard/js/identity.js");
      return keys.map((k) => parseKey(k, tasks));
    }""", [[m.key for m in ids], TASKS])
    for want, got in zip(ids, parsed, strict=True):
        expected = want.to_dict()
        if want.kind in ("core", "custom"):  # best tracking of these is not in the key
            expected.pop("direction")
        assert {f: got[f] for f in expected} == expected, want.key
    assert console.errors == []
