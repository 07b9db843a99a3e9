"""The page's own logic, run in the browser: the SSE reader and the key fallback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from service.core.naming import metric_key
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
    cuts = [0, 3, 17, 30, 31, 60, 61, 62, 90, len(wire)]
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


def _identities() -> Iterator[tuple[str, dict[str, Any]]]:
    names = [("acc1", t) for t in TASKS] + [("acc3", t) for t in TASKS] + [("loss", t) for t in TASKS] + [
        (s, None) for s in ("loss", "chain_accuracy", "partial_chain_accuracy")]
    for phase, window, subset, (stat, task) in itertools.product(
            ("train", "val", "val_mask"), ("step", "step_avg", "epoch"), (None, ("rarity", "rare_1")), names):
        if phase != "train" and window != "epoch":
            continue
        family, label = subset or (None, None)
        name = f"{stat}_{task}" if task else stat
        key = metric_key("window", name, phase=phase, window=window, family=family, label=label)
        yield key, {"kind": "window", "phase": phase, "window": window, "family": family, "label": label,
                    "statistic": stat, "task": task}
    for kind in ("lr", "pipeline", "gradnorm", "custom"):
        yield metric_key(kind, "queue_depths/batch_q"), {"kind": kind, "statistic": "queue_depths/batch_q"}
    yield metric_key("core", "val_acc1", task="taxa_L10"), {"kind": "core", "statistic": "val_acc1", "task": "taxa_L10"}
    yield metric_key("window", "samples_per_sec"), {"kind": "window", "statistic": "samples_per_sec", "window": "step"}
    yield (metric_key("window", "epoch_duration_sec", phase="train", window="epoch"),
           {"kind": "window", "statistic": "epoch_duration_sec", "window": "epoch", "phase": "train"})


def test_key_fallback_inverts_the_service_naming(page: Any) -> None:
    """For REST values (no identity attached) the page derives what the service's naming encoded."""
    browser_page, _, console = page
    cases = list(_identities())
    parsed = browser_page.evaluate("""async ([keys, tasks]) => {
      const { parseKey } = await import("/dashboard/js/identity.js");
      return keys.map((k) => parseKey(k, tasks));
    }""", [[k for k, _ in cases], TASKS])
    for (key, want), got in zip(cases, parsed, strict=True):
        assert {f: got[f] for f in want} == want, key
    assert console.errors == []
