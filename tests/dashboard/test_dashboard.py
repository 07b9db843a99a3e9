"""The dashboard in a real headless Chromium against a real service fed by real clients."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.conftest import Console, Service, readme_screenshot, serve
from tests.dashboard.feed import Feed

pytestmark = pytest.mark.e2e
WAIT_MS = 15_000
ALERT_RULE = {"KEY": "train/loss", "ABOVE": 0.0, "NAME": "loss-positive", "LEVEL": "WARN"}
CHARTED = ["loss", "chain", "task/genus", "task/species", "pipeline/cache", "gradnorm/avg_norm"]
# pixels drawn in colour (series and markers; axes, grid and text are grey) on a chart's canvas
COLOURED_PIXELS = """(id) => {
  const c = window.__lm.charts.get(id).plot.ctx.canvas;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) n++;
  return n;
}"""


def get(svc: Service, path: str, token: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    reply = httpx.get(f"{svc.url}{path}", headers=headers, timeout=10)
    reply.raise_for_status()
    return reply.json()


def shown(text: str) -> float:
    return float(text.replace("\u2013", "nan"))  # the page shows an en dash for no value


def open_run(page: Any, svc: Service, run_id: str) -> float:
    """Load the run page afresh; returns ms from navigation start until the charts were drawn with data."""
    page.goto("about:blank")  # a new document, not just a new hash: the load is measured from scratch
    page.goto(f"{svc.url}/#/run/{run_id}")
    page.wait_for_function("window.__lm.marks.loaded != null", timeout=WAIT_MS)
    return float(page.evaluate("window.__lm.marks.loaded"))


def check_charts(page: Any) -> None:
    for chart in CHARTED:
        assert page.evaluate(f"window.__lm.charts.get({chart!r}).pointCount()") > 0, chart
        assert page.evaluate(COLOURED_PIXELS, chart) > 50, f"chart {chart} looks blank"


def check_core_value(page: Any, svc: Service, run_id: str) -> None:
    api = get(svc, f"/v1/runs/{run_id}/metrics")["metrics"]["core/train_loss"]["value"]
    card = page.locator('#core .card[data-key="core/train_loss"]')
    assert float(card.get_attribute("data-value")) == api
    assert shown(card.locator(".v").inner_text()) == pytest.approx(api, rel=1e-4)


def live_latency_ms(page: Any, feed: Feed, first: int, last: int) -> float:
    """Log steps, flush, wait for the last step on the loss chart; ms from flush() to drawn."""
    feed.train(first, last)
    flushed_at = time.time()
    feed.flush()
    page.wait_for_function(f"window.__lm.charts.get('loss').lastStep() >= {last}", timeout=WAIT_MS)
    return float(page.evaluate(f"window.__lm.marks.drawn.get({last})")) - flushed_at * 1000


def check_subsets(page: Any, svc: Service, run_id: str) -> None:
    page.click('.families button[data-value="rarity"]')
    page.click('.views button[data-value="train"]')
    assert sorted(page.locator("#subset-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.label)")) == \
        ["common", "rare"]
    key = "train/subset/rarity/rare/chain_accuracy"
    api = get(svc, f"/v1/runs/{run_id}/metrics")["metrics"][key]["value"]
    column = page.locator('#subset-table th[data-column="chain accuracy"]')
    column.click()  # sort by it, descending first
    cells = page.locator("#subset-table tbody tr").evaluate_all(
        "rs => rs.map(r => [r.dataset.label, Number(r.querySelector('td.num').dataset.value)])")
    assert [v for _, v in cells] == sorted((v for _, v in cells), reverse=True)
    assert dict(cells)["rare"] == api
    history = get(svc, f"/v1/runs/{run_id}/history?keys={key}")["series"][key]
    # the family's history is fetched when it is opened: the sparkline has every point
    page.wait_for_function(f"window.__lm.view().model.series.get({key!r})?.steps.length === {len(history['steps'])}")
    page.click('#subset-table tr[data-label="rare"]')
    page.wait_for_function("window.__lm.charts.get('subset')?.pointCount() > 0", timeout=WAIT_MS)
    page.click('.families button[data-value="null"]')
    assert sorted(page.locator("#subset-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.label)")) == \
        ["non_null", "null"]


def test_runs_run_page_live_subsets_ranks_compare(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    with serve(tmp_path) as svc:
        feed, other = Feed(svc.url, "exp-a"), Feed(svc.url, "exp-b", seed=8)
        feed.train(1, 16)
        feed.checkpoint()
        feed.train(17, 20)
        other.train(1, 12)
        feed.flush()
        other.flush()
        page, console = browser.new_page(viewport={"width": 1400, "height": 900}), Console()
        console.attach(page)

        page.goto(f"{svc.url}/")
        page.wait_for_selector('#runs tr[data-run="exp-b"]')
        for run in get(svc, "/v1/runs")["runs"]:
            row = page.locator(f'#runs tr[data-run="{run["run_id"]}"]')
            assert int(row.locator("td.step").inner_text()) == run["watermark"]
        page.screenshot(path=str(artifacts / "runs.png"))

        load_ms = open_run(page, svc, "exp-a")
        check_charts(page)
        check_core_value(page, svc, "exp-a")
        assert {"kind": "checkpoint", "step": 16} in page.evaluate(
            "window.__lm.view().model.markers.map(m => ({kind: m.kind, step: m.step}))")
        latencies = [live_latency_ms(page, feed, 21 + 2 * i, 22 + 2 * i) for i in range(3)]
        check_core_value(page, svc, "exp-a")
        page.wait_for_function("window.__lm.view().model.info.watermark >= 26", timeout=WAIT_MS)
        page.set_viewport_size({"width": 1400, "height": 1150})
        readme_screenshot(page)
        page.set_viewport_size({"width": 1400, "height": 900})
        page.screenshot(path=str(artifacts / "run.png"), full_page=True)

        check_subsets(page, svc, "exp-a")
        page.locator("#subsets").screenshot(path=str(artifacts / "subsets.png"))

        feed.train(27, 30, ranks=(0,))  # rank 1 stalls
        feed.flush(ranks=(0,))
        completed = [r["completed"] for r in get(svc, "/v1/runs/exp-a")["ranks"]]
        open_run(page, svc, "exp-a")
        straggler = page.locator("#ranks tr.straggler")
        assert straggler.count() == 1 and straggler.get_attribute("data-rank") == "1"
        assert int(straggler.locator("td.lag").inner_text()) == max(completed) - completed[1] > 0
        page.locator("#ranks").screenshot(path=str(artifacts / "ranks.png"))

        page.goto(f"{svc.url}/#/")
        for run_id in ("exp-a", "exp-b"):
            page.check(f'#runs tr[data-run="{run_id}"] input[type=checkbox]')
        page.click("#compare")
        page.wait_for_function("window.__lm.charts.get('compare/train/loss')?.pointCount() > 0", timeout=WAIT_MS)
        per_run = page.evaluate("window.__lm.charts.get('compare/train/loss').plot.data.slice(1)"
                                ".map(col => col.filter(v => v != null).length)")
        assert len(per_run) == 2 and min(per_run) > 0
        page.screenshot(path=str(artifacts / "compare.png"))
        page.close()
        feed.close()
        other.close()
    figures = {"load_ms": load_ms, "flush_to_screen_ms": latencies, "median_flush_to_screen_ms":
               statistics.median(latencies)}
    (artifacts / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"dashboard: {figures}")
    assert console.errors == []


def test_alert_appears_live(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    with serve(tmp_path) as svc:
        feed = Feed(svc.url, "exp-alert", alerts=[ALERT_RULE])  # the run exists once this returns
        page, console = browser.new_page(viewport={"width": 1400, "height": 900}), Console()
        console.attach(page)
        page.goto(f"{svc.url}/#/run/exp-alert")
        page.wait_for_selector("#live.on")  # subscribed: what fires from now on comes over the stream
        page.wait_for_selector("#run-alerts")
        feed.train(1, 2)  # the rule fires once, when train/loss first goes above 0
        feed.flush()
        page.wait_for_selector(".alerts .alert", timeout=WAIT_MS)  # the toast of a live alert
        page.wait_for_selector('#run-alerts tr[data-name="loss-positive"]', timeout=WAIT_MS)
        fired = [a for a in get(svc, "/v1/runs/exp-alert")["alerts"] if a["name"] == "loss-positive"]
        row = page.locator('#run-alerts tr[data-name="loss-positive"]')
        assert len(fired) == 1 and int(row.locator("td.num").inner_text()) == fired[0]["step"]
        page.screenshot(path=str(artifacts / "alert.png"))
        page.close()
        feed.close()
    assert console.errors == []


def test_token_is_asked_for_then_used(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    token = "dash-token-123"
    with serve(tmp_path, tokens=[token]) as svc:
        feed = Feed(svc.url, "exp-auth", token=token)
        feed.train(1, 4)
        feed.flush()
        page, console = browser.new_page(viewport={"width": 1200, "height": 800}), Console()
        console.attach(page)
        page.goto(f"{svc.url}/")
        page.wait_for_selector("#token-dialog[open]")
        page.screenshot(path=str(artifacts / "token.png"))
        page.fill("#token-input", token)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector('#runs tr[data-run="exp-auth"]')
        assert page.evaluate("sessionStorage.getItem('linnaeus-metrics-token')") == token
        open_run(page, svc, "exp-auth")  # REST and the stream both carry the token now
        feed.train(5, 6)
        feed.flush()
        page.wait_for_function("window.__lm.charts.get('loss').lastStep() >= 6", timeout=WAIT_MS)
        page.close()
        feed.close()
    refused = [e for e in console.errors if "401" in e and "Failed to load resource" in e]
    assert refused and console.errors == refused  # the browser logs the refused request, nothing else
