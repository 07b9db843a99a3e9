// uPlot charts over a step axis: lines for windows, dots for epoch points, an optional
// second (LR) axis, and checkpoint/restore markers drawn as vertical lines.

/* global uPlot */

const PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#e67700", "#5c940d",
                 "#a61e4d", "#364fc7"];
const HEIGHT = 220;
const MARKER_COLORS = { checkpoint: "#2b8a3e", restore: "#c62828" };
export const charts = new Map(); // chart id -> LineChart (read by the browser tests)

/** Union of the series' steps and each series' values on it (null where it has none). */
export function align(seriesList) {
  const steps = new Set();
  for (const s of seriesList) for (const x of s.steps) steps.add(x);
  const xs = Float64Array.from(steps).sort();
  const at = new Map();
  xs.forEach((x, i) => at.set(x, i));
  const columns = seriesList.map((s) => {
    const column = new Array(xs.length).fill(null);
    s.steps.forEach((x, i) => { column[at.get(x)] = s.values[i]; });
    return column;
  });
  return [Array.from(xs), ...columns];
}

function markerPlugin(getMarkers) {
  return { hooks: { draw: [(u) => {
    const { ctx, bbox } = u;
    ctx.save();
    ctx.setLineDash([4, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    for (const m of getMarkers()) {
      const x = Math.round(u.valToPos(m.step, "x", true));
      if (x < bbox.left || x > bbox.left + bbox.width) continue;
      ctx.strokeStyle = MARKER_COLORS[m.kind] || "#888";
      ctx.beginPath(); ctx.moveTo(x, bbox.top); ctx.lineTo(x, bbox.top + bbox.height); ctx.stroke();
    }
    ctx.restore();
  }] } };
}

const fmtTick = (v) => (v == null ? "" : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : String(+v.toPrecision(4)));

/** One chart: ``defs`` are ``[{key, label, axis, points}]``; ``source(key)`` gives {steps, values}. */
export class LineChart {
  constructor(el, id, title, defs, source, getMarkers, onDraw) {
    this.el = el; this.id = id; this.title = title; this.defs = defs; this.source = source;
    this.getMarkers = getMarkers; this.onDraw = onDraw;
    this._build();
    charts.set(id, this);
    // follow the panel's width (window resizes, the grid reflowing); the height stays
    this.resizer = new ResizeObserver(() => {
      if (Math.abs(this._width() - this.plot.width) > 2) this.plot.setSize({ width: this._width(), height: HEIGHT });
    });
    this.resizer.observe(this.el);
  }

  _build() {
    const hasLr = this.defs.some((d) => d.axis === "lr");
    const series = [{ label: "step" }, ...this.defs.map((d, i) => ({
      label: d.label, scale: d.axis === "lr" ? "lr" : "y", stroke: PALETTE[i % PALETTE.length], width: 1.5,
      spanGaps: true, points: d.points ? { show: true, size: 7, fill: PALETTE[i % PALETTE.length] } : { show: false },
      paths: d.points ? () => null : undefined, value: (u, v) => (v == null ? "–" : fmtTick(v)),
    }))];
    const axes = [{ label: "step" }, { scale: "y", values: (u, vs) => vs.map(fmtTick), size: 56 }];
    if (hasLr) axes.push({ scale: "lr", side: 1, grid: { show: false }, values: (u, vs) => vs.map(fmtTick), size: 60 });
    const opts = {
      title: this.title, width: this._width(), height: HEIGHT, series, axes,
      scales: { x: { time: false }, lr: { distr: 1 } },
      legend: { live: true }, cursor: { drag: { x: true, y: false } },
      plugins: [markerPlugin(this.getMarkers)],
      hooks: { draw: [() => this.onDraw?.(this)] },
    };
    this.plot = new uPlot(opts, this._data(), this.el);
  }

  _width() { return Math.max(300, (this.el.clientWidth || 472) - 12); } // less the panel's padding

  _data() { return align(this.defs.map((d) => this.source(d.key) || { steps: [], values: [] })); }

  /** Redraw with the current data; rebuild when the set of series changed. */
  update(defs) {
    if (defs && defs.map((d) => d.key).join() !== this.defs.map((d) => d.key).join()) {
      this.defs = defs;
      this.plot.destroy();
      this._build();
      return;
    }
    this.plot.setData(this._data());
  }

  /** Points currently drawn (for tests and the load-time mark). */
  pointCount() { return this.plot.data.slice(1).reduce((n, col) => n + col.filter((v) => v != null).length, 0); }

  lastStep() { const xs = this.plot.data[0]; return xs.length ? xs[xs.length - 1] : null; }

  destroy() { this.resizer.disconnect(); this.plot.destroy(); charts.delete(this.id); }
}

/** A tiny line on a canvas (subset table rows): cheap, no chart object. */
export function sparkline(values, width = 90, height = 22) {
  const canvas = document.createElement("canvas");
  canvas.className = "spark";
  canvas.width = width * devicePixelRatio; canvas.height = height * devicePixelRatio;
  canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  const finite = values.filter(Number.isFinite);
  if (finite.length < 1) return canvas;
  const ctx = canvas.getContext("2d");
  const lo = Math.min(...finite), hi = Math.max(...finite), span = hi - lo || 1;
  ctx.scale(devicePixelRatio, devicePixelRatio);
  ctx.strokeStyle = PALETTE[0]; ctx.lineWidth = 1.2; ctx.beginPath();
  finite.forEach((v, i) => {
    const x = finite.length === 1 ? width / 2 : (i / (finite.length - 1)) * (width - 2) + 1;
    const y = height - 2 - ((v - lo) / span) * (height - 4);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  return canvas;
}

export function destroyAll() { for (const c of [...charts.values()]) c.destroy(); }
