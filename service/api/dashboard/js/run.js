// The run page: core values, alerts, rank progress, the charts and the subset drill-down,
// loaded over REST and then kept current by the run's stream.

import { LineChart, charts } from "./charts.js";
import { place, section } from "./identity.js";
import { RunModel } from "./model.js";
import { ranksTable, tickAges } from "./ranks.js";
import { SubsetPanel } from "./subsets.js";
import { badge, el, fmt } from "./util.js";

const SECTIONS = [["training", "Training"], ["timing", "Throughput"], ["pipeline", "Pipeline"],
                  ["gradnorm", "GradNorm"], ["custom", "Custom metrics"]];
const CHART_ORDER = (a, b) => {
  const rank = (id) => (id === "loss" ? 0 : id === "chain" ? 1 : id.startsWith("task/") ? 2 : 3);
  return rank(a) - rank(b) || a.localeCompare(b);
};

/** ``{chartId: {title, defs: [{key, label, axis, points}]}}`` for every charted series. */
export function chartPlan(model) {
  const plan = {};
  for (const key of model.series.keys()) {
    const where = place(model.identity(key), model.tasks);
    if (!where) continue;
    const chart = (plan[where.chart] ??= { title: where.title, defs: [] });
    chart.defs.push({ key, label: where.label, axis: where.axis, points: where.points });
  }
  for (const chart of Object.values(plan)) chart.defs.sort((a, b) => a.label.localeCompare(b.label));
  return plan;
}

function coreCards(model) {
  const keys = [...model.latest.keys()].filter((k) => k.startsWith("core/")).sort();
  const cards = keys.map((k) => {
    const { value, step } = model.latest.get(k);
    return el("div.card", { dataset: { key: k, value } }, el("div.k", {}, k.slice(5)), el("div.v", {}, fmt(value)),
      el("div.k", {}, `step ${step}`));
  });
  const best = Object.entries(model.summary).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
    el("div.card.best", { dataset: { key: k, value: v } }, el("div.k", {}, k), el("div.v", {}, fmt(v))));
  const core = el("div#core.cards", {}, cards.length ? cards : el("span.muted", {}, "no core values yet"));
  if (!best.length) return [core];
  return [core, el("details#best", {}, el("summary", {}, `best / final values (${best.length})`), el("div.cards", {}, best))];
}

function alertList(alerts) {
  if (!alerts.length) return el("p.muted", { id: "run-alerts" }, "no alerts");
  return el("table", { id: "run-alerts" }, el("tbody", {}, alerts.slice(-20).reverse().map((a) =>
    el("tr.alert-row", { dataset: { name: a.name, key: a.key ?? "" } }, el("td", {}, badge(a.level || "WARN")),
      el("td", {}, a.name), el("td.num", {}, a.step ?? "–"), el("td", {}, a.key ?? ""), el("td", {}, a.message || "")))));
}

export class RunPage {
  /** ``hooks``: ``stream(state)`` and ``alert(alert)`` for the page's frame (live badge, toasts). */
  constructor(main, runId, marks, hooks = {}) {
    this.main = main; this.runId = runId; this.marks = marks; this.hooks = hooks;
    this.frame = null; this.dirty = new Set();
    this.model = new RunModel(runId, (what, detail) => this._changed(what, detail));
    this.subsets = null;
  }

  async open() {
    this.main.replaceChildren(el("h1", {}, this.runId), el("p.muted", {}, "loading…"));
    await this.model.start();
    if (!this.model.closed) this.clock = setInterval(() => tickAges(this.main), 1000);
    return this;
  }

  close() { this.model.close(); clearInterval(this.clock); cancelAnimationFrame(this.frame); this._destroyCharts(); }

  _changed(what, detail) {
    if (what === "stream") { this.hooks.stream?.(detail); return; }
    if (what === "alert") this.hooks.alert?.(detail);
    this.dirty.add(what === "reset" ? "all" : what);
    // many messages in one frame cost one redraw
    if (this.frame == null) this.frame = requestAnimationFrame(() => this._render());
  }

  _render() {
    this.frame = null;
    const dirty = this.dirty;
    this.dirty = new Set();
    if (dirty.has("all") || !this.main.querySelector("#charts-training")) this._layout();
    if (dirty.has("data") || dirty.has("all")) this._charts();
    this._header();
    if (dirty.has("info") || dirty.has("alert") || dirty.has("all")) this._info();
    if (!this.marks.loaded && [...charts.values()].some((c) => c.pointCount() > 0)) {
      this.marks.loaded = performance.now(); // navigation start → first charts drawn with data
    }
  }

  _layout() {
    this._destroyCharts();
    this.subsets?.close();
    const sections = SECTIONS.map(([id, title]) => el(`section.sec-${id}`, { hidden: true },
      el("h2", {}, title), el("div.grid", { id: `charts-${id}` })));
    this.main.replaceChildren(
      el("h1", {}, this.runId, " ", el("span#run-status")),
      el("div#header"),
      el("h2", {}, "Alerts"), el("div", { id: "alerts-box" }),
      el("h2", {}, "Ranks"), el("div", { id: "ranks-box" }),
      sections[0], el("section", {}, el("h2", {}, "Subsets"), el("div.panel", { id: "subsets" })), ...sections.slice(1));
    this.subsets = new SubsetPanel(this.main.querySelector("#subsets"), this.model);
  }

  _charts() {
    const plan = chartPlan(this.model);
    for (const id of Object.keys(plan).sort(CHART_ORDER)) {
      const { title, defs } = plan[id];
      const existing = charts.get(id);
      if (existing) { existing.update(defs); continue; }
      const box = this.main.querySelector(`#charts-${section(id)}`);
      box.closest("section").hidden = false;
      const panel = el("div.panel", { dataset: { chart: id } });
      box.append(panel);
      new LineChart(panel, id, title, defs, (k) => this.model.series.get(k), () => this.model.markers,
        (c) => this._drawn(c));
    }
    this.subsets.render();
  }

  _drawn(chart) {
    // when each step first reached the screen (the stream latency measurement reads this)
    const step = chart.lastStep();
    if (step != null && !this.marks.drawn.has(step)) this.marks.drawn.set(step, Date.now());
  }

  _header() {
    const info = this.model.info;
    this.main.querySelector("#run-status").replaceChildren(badge(info.status || "?"));
    const step = this.model.latest.get("core/global_step")?.value ?? (info.watermark >= 0 ? info.watermark : null);
    this.main.querySelector("#header").replaceChildren(
      el("p.muted", {}, `step ${step ?? "–"} of ${info.total_steps} · ${info.world_size} rank(s) · tasks ${this.model.tasks.join(", ")}`),
      ...coreCards(this.model));
  }

  _info() {
    this.main.querySelector("#alerts-box").replaceChildren(alertList(this.model.alerts));
    this.main.querySelector("#ranks-box").replaceChildren(ranksTable(this.model.info));
  }

  _destroyCharts() { for (const c of [...charts.values()]) c.destroy(); }
}
