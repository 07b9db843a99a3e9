// Subset drill-down: pick a family (the built-in "null" family splits null and non-null
// targets), then its labels in a sortable table with sparklines; a click shows the label's curves.

import { LineChart, sparkline } from "./charts.js";
import { subsetOf } from "./identity.js";
import { el, fmt } from "./util.js";

/** ``{family: {view: {label: {metric: key}}}}`` where a view is a phase and window. */
export function subsetIndex(model) {
  const index = {};
  for (const key of model.keys()) {
    const where = subsetOf(model.identity(key), model.tasks);
    if (!where) continue;
    const view = where.phase === "train" && where.window === "epoch" ? "train epoch" : where.phase;
    const labels = ((index[where.family] ??= {})[view] ??= {});
    (labels[where.label] ??= {})[where.metric] = key;
  }
  return index;
}

const MAX_ROWS = 200; // a family may have thousands of labels: the table shows the top of the sort
const METRIC_ORDER = (a, b) => (a.startsWith("chain") ? -1 : b.startsWith("chain") ? 1 : a.localeCompare(b));

export class SubsetPanel {
  constructor(root, model) {
    this.root = root; this.model = model;
    this.family = null; this.view = null; this.label = null; this.sort = { column: "label", desc: false };
    this.chart = null;
  }

  render() {
    const index = subsetIndex(this.model);
    const families = Object.keys(index).sort();
    if (!families.length) { this.root.replaceChildren(el("p.muted", {}, "no subset metrics yet")); return; }
    if (this.family === null || !index[this.family]) this.family = families.includes("null") && families.length > 1 ? families.find((f) => f !== "null") : families[0];
    const views = Object.keys(index[this.family]).sort();
    if (this.view === null || !views.includes(this.view)) this.view = views.includes("train") ? "train" : views[0];
    const labels = index[this.family][this.view];
    this.root.replaceChildren(
      el("div.tabs.families", {}, families.map((f) => this._tab(f, f === "null" ? "null vs non-null" : f, this.family,
        () => { this.family = f; this.label = null; }))),
      el("div.tabs.views", {}, views.map((v) => this._tab(v, v, this.view, () => { this.view = v; }))),
      this._table(labels),
      el("div.subset-chart"));
    this._drawChart(labels);
  }

  _tab(value, text, current, pick) {
    return el(`button${value === current ? ".on" : ""}`, { dataset: { value },
      onclick: () => { pick(); this.render(); } }, text);
  }

  _table(labels) {
    const metrics = [...new Set(Object.values(labels).flatMap((m) => Object.keys(m)))].sort(METRIC_ORDER);
    const rows = Object.entries(labels).map(([label, keys]) => ({
      label, keys, values: Object.fromEntries(metrics.map((m) => [m, this._latest(keys[m])])) }));
    const { column, desc } = this.sort;
    rows.sort((a, b) => {
      const [x, y] = column === "label" ? [a.label, b.label] : [a.values[column] ?? -Infinity, b.values[column] ?? -Infinity];
      return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
    });
    const head = ["label", ...metrics].map((m) => el(`th.sortable${m === column ? (desc ? ".sorted-desc" : ".sorted-asc") : ""}`,
      { dataset: { column: m }, onclick: () => this._sortBy(m) }, m));
    const spark = metrics[0];
    const shown = rows.slice(0, MAX_ROWS);
    this._ensureLoaded(shown.map((r) => r.keys[spark]));
    return el("table.subsets", { id: "subset-table" },
      el("caption", {}, rows.length > MAX_ROWS ? `first ${MAX_ROWS} of ${rows.length} labels (sort to see others)` : ""),
      el("thead", {}, el("tr", {}, head, el("th", {}, `${spark ?? ""} trend`))),
      el("tbody", {}, shown.map((r) => el(`tr.clickable${r.label === this.label ? ".selected" : ""}`,
        { dataset: { label: r.label }, onclick: () => { this.label = r.label; this.render(); } },
        el("td", {}, r.label), metrics.map((m) => el("td.num", { dataset: { value: r.values[m] ?? "" } }, fmt(r.values[m]))),
        el("td", {}, sparkline(this.model.series.get(r.keys[spark])?.values || []))))));
  }

  /** Fetch the history of the keys on screen (values come from the latest ones; curves need history). */
  _ensureLoaded(keys) {
    const missing = keys.filter((k) => k && !this.model.fetched.has(k));
    if (missing.length) this.model.loadKeys(missing).then(() => this.render());
  }

  _sortBy(column) {
    this.sort = { column, desc: this.sort.column === column ? !this.sort.desc : column !== "label" };
    this.render();
  }

  _latest(key) { return (key && this.model.latest.get(key)?.value) ?? null; }

  _drawChart(labels) {
    this.chart?.destroy();
    this.chart = null;
    const keys = this.label && labels[this.label];
    if (!keys) return;
    this._ensureLoaded(Object.values(keys));
    const points = this.view !== "train";
    const defs = Object.entries(keys).sort(([a], [b]) => METRIC_ORDER(a, b)).map(([metric, key]) => ({ key, label: metric, points }));
    this.chart = new LineChart(this.root.querySelector(".subset-chart"), "subset", `${this.family} = ${this.label} (${this.view})`,
      defs, (k) => this.model.series.get(k), () => this.model.markers);
  }

  close() { this.chart?.destroy(); }
}
