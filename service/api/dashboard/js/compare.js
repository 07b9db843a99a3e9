// Two or more runs overlaid: the same metrics of each run on shared step axes, live.

import { LineChart, charts } from "./charts.js";
import { RunModel } from "./model.js";
import { el } from "./util.js";

export const MAX_COMPARED = 4; // each run holds a stream: browsers allow 6 connections per host

function defaultKeys(models) {
  const tasks = [...new Set(models.flatMap((m) => m.tasks))];
  return ["train/loss", "train/chain_accuracy", "val/loss", "val/chain_accuracy", ...tasks.map((t) => `train/acc1_${t}`)];
}

export class ComparePage {
  constructor(main, runIds) {
    this.main = main; this.runIds = runIds.slice(0, MAX_COMPARED);
    this.frame = null; this.extra = [];
    this.models = this.runIds.map((id) => new RunModel(id, (what) => what !== "stream" && this._schedule()));
  }

  async open() {
    this.main.replaceChildren(el("h1", {}, "Compare"), el("p.muted", {}, "loading…"));
    await Promise.all(this.models.map((m) => m.start()));
    if (this.closed) return this;
    this._layout();
    this._schedule();
    return this;
  }

  close() { this.closed = true; for (const m of this.models) m.close(); cancelAnimationFrame(this.frame); this._destroy(); }

  _schedule() { if (this.frame == null) this.frame = requestAnimationFrame(() => this._render()); }

  _layout() {
    const all = [...new Set(this.models.flatMap((m) => [...m.series.keys()]))].sort();
    const picker = el("select", { id: "compare-key", onchange: (e) => { this.extra.push(e.target.value); this._render(); } },
      el("option", { value: "" }, "add a metric…"), all.map((k) => el("option", { value: k }, k)));
    this.main.replaceChildren(el("h1", {}, `Compare: ${this.runIds.join(" · ")}`),
      this.runIds.length > 1 ? null : el("p.error", {}, "pick two or more runs to compare"),
      el("div.toolbar", {}, picker), el("div.grid", { id: "compare-charts" }));
  }

  _render() {
    this.frame = null;
    const box = this.main.querySelector("#compare-charts");
    if (!box) return;
    for (const key of [...defaultKeys(this.models), ...this.extra]) {
      const holders = this.models.filter((m) => m.series.has(key));
      if (!holders.length) continue;
      const id = `compare/${key}`;
      const defs = holders.map((m) => ({ key: `${m.runId}\u0000${key}`, label: m.runId, points: !key.startsWith("train/") || key.includes("/epoch_") }));
      const existing = charts.get(id);
      if (existing) { existing.update(defs); continue; }
      const panel = el("div.panel", { dataset: { chart: id } });
      box.append(panel);
      new LineChart(panel, id, key, defs, (k) => this._series(k), () => []);
    }
  }

  _series(composite) {
    const [runId, key] = composite.split("\u0000");
    return this.models.find((m) => m.runId === runId)?.series.get(key);
  }

  _destroy() { for (const c of [...charts.values()]) c.destroy(); }
}
