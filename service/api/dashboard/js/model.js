// One run as the page sees it: REST state loaded once, then kept current by the stream.
// Stream messages that arrive while the REST load is in flight are held and applied after
// it, so nothing between the load and the stream's start is lost; points are keyed by
// step, so a message the load already covered just rewrites the same point.

import { api } from "./api.js";
import { parseKey, place } from "./identity.js";
import { Stream } from "./sse.js";

const HISTORY_POINTS = 5000;
const INFO_REFRESH_MS = 1000;
const URL_KEYS_CHARS = 6000; // keys per /history request, well within URL limits

export class RunModel {
  constructor(runId, onChange) {
    this.runId = runId;
    this.onChange = onChange; // (what: "data" | "info" | "alert" | "reset" | "stream", detail)
    this.series = new Map(); // key -> {steps, values}
    this.latest = new Map(); // key -> {value, step}
    this.ids = new Map(); // key -> identity
    this.fetched = new Set(); // keys whose history was asked for (the stream extends it)
    this.alerts = [];
    this.extraMarkers = [];
    this.info = null;
    this.summary = {};
    this.loaded = false;
    this.closed = false;
    this.held = [];
  }

  get tasks() { return this.info ? this.info.tasks.map((t) => t.name) : []; }

  /** Markers on the step axis: ``[{kind, step, id}]``. */
  get markers() {
    if (this.info && Array.isArray(this.info.markers)) return this.info.markers.concat(this.extraMarkers);
    const fromIds = (this.info?.checkpoints || []).filter((c) => /^\d+$/.test(c))
      .map((c) => ({ kind: "checkpoint", step: Number(c), id: c }));
    return fromIds.concat(this.extraMarkers);
  }

  async start() {
    this.stream = new Stream(api.streamPath(this.runId), (t, d) => this._message(t, d),
                             (s) => this._notify("stream", s)).start();
    await this.stream.ready; // subscribed first, so nothing falls between the load and the stream
    await this.load();
    return this;
  }

  close() { this.closed = true; this.stream?.close(); clearTimeout(this.infoTimer); }

  /** Tell the view, unless it was closed meanwhile (a late reply must not draw over the next view). */
  _notify(what, detail) { if (!this.closed) this.onChange(what, detail); }

  async load() {
    this.loaded = false;
    const [info, metrics, summary] = await Promise.all([
      api.run(this.runId), api.metrics(this.runId), api.summary(this.runId)]);
    this._setInfo(info);
    this.summary = summary.summary || {};
    this.latest = new Map(Object.entries(metrics.metrics));
    this.series.clear();
    this.ids.clear();
    for (const [key, m] of this.latest) if (m.metric) this.ids.set(key, m.metric); // identities as the service gives them
    this.fetched.clear();
    // only charted keys now; a subset family's series when the user opens it (there may be thousands)
    await this.loadKeys([...this.latest.keys()].filter((k) => place(this.identity(k), this.tasks)));
    this.loaded = true;
    const held = this.held;
    this.held = [];
    for (const [type, data] of held) this._apply(type, data);
    this._notify("reset");
  }

  /** Every key the run has a value for. */
  keys() { return new Set([...this.latest.keys(), ...this.series.keys()]); }

  /** A key's identity: as the service gave it (stream, /metrics, /history), else derived from the key
   * (only values recorded before the service kept identities lack one). */
  identity(key) {
    let id = this.ids.get(key);
    if (!id) this.ids.set(key, (id = parseKey(key, this.tasks)));
    return id;
  }

  /** Fetch the history of ``keys`` and merge it into the series (points are keyed by step). */
  async loadKeys(keys) {
    for (const key of keys) this.fetched.add(key);
    const chunks = [[]];
    let size = 0;
    for (const key of keys) {
      if (size + key.length > URL_KEYS_CHARS) { chunks.push([]); size = 0; }
      chunks[chunks.length - 1].push(key);
      size += key.length + 1;
    }
    const replies = await Promise.all(chunks.filter((c) => c.length).map((c) => api.history(this.runId, c, HISTORY_POINTS)));
    for (const reply of replies) {
      for (const [key, h] of Object.entries(reply.series)) {
        if (h.metric && !this.ids.has(key)) this.ids.set(key, h.metric);
        const s = this._seriesOf(key);
        h.steps.forEach((step, i) => insertPoint(s, step, h.values[i]));
      }
    }
  }

  _seriesOf(key) {
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { steps: [], values: [] }));
    return s;
  }

  _setInfo(info) {
    this.info = info;
    this.extraMarkers = [];
    if (Array.isArray(info.alerts)) this.alerts = info.alerts.slice();
  }

  _message(type, data) {
    if (!this.loaded) { this.held.push([type, data]); return; }
    this._apply(type, data);
  }

  _apply(type, data) {
    if (type === "emission") this._emission(data);
    else if (type === "alert") this._alert(data);
    else if (type === "resync") this.load();
    else if (type === "status") this._status(data);
  }

  _emission(data) {
    for (const [key, value] of Object.entries(data.values)) {
      if (data.metrics?.[key]) this.ids.set(key, data.metrics[key]);
      insertPoint(this._seriesOf(key), data.step, value);
      const last = this.latest.get(key);
      if (!last || last.step <= data.step) this.latest.set(key, { value, step: data.step });
    }
    if (data.group === "final") this.summary = { ...this.summary, ...data.values };
    this._notify("data", data);
    this._refreshInfo();
  }

  _alert(data) {
    const same = (a) => a.name === data.name && a.step === data.step && a.key === data.key && a.rank === data.rank;
    if (this.alerts.some(same)) return; // the REST load already had it
    this.alerts.push(data);
    this._notify("alert", data);
    this._refreshInfo();
  }

  _status(data) {
    if (data.kind === "restore") { this.load(); return; } // the service discarded history past the cut
    if (data.kind === "checkpoint" && !Array.isArray(this.info?.markers)) {
      this.extraMarkers.push({ kind: "checkpoint", step: data.step, id: data.detail?.id ?? String(data.step) });
    }
    this._refreshInfo();
  }

  /** Re-read the run's info at most once a second, only when the stream says something changed. */
  _refreshInfo() {
    if (this.infoTimer) return;
    this.infoTimer = setTimeout(async () => {
      try {
        this._setInfo(await api.run(this.runId));
        this._notify("info", this.info);
      } finally { this.infoTimer = null; }
    }, INFO_REFRESH_MS);
  }
}

/** Add (or overwrite) the value at ``step``, keeping steps sorted (appends are the usual case). */
export function insertPoint(s, step, value) {
  const n = s.steps.length;
  if (!n || s.steps[n - 1] < step) { s.steps.push(step); s.values.push(value); return; }
  let i = n - 1;
  while (i > 0 && s.steps[i - 1] >= step) i--;
  if (s.steps[i] === step) s.values[i] = value;
  else { s.steps.splice(i, 0, step); s.values.splice(i, 0, value); }
}
