// Server-sent events over fetch(): EventSource cannot send an Authorization header.
// Parses the SSE wire format (id/event/data fields, ':' comments) and reconnects with
// Last-Event-ID so that the service replays whatever was missed.

import { authFetch } from "./api.js";

export class Stream {
  /**
   * @param {string} path the stream URL
   * @param {(type: string, data: object, id: number|null) => void} onMessage
   * @param {(state: string) => void} onState "open" | "retry" | "unavailable"
   */
  constructor(path, onMessage, onState) {
    this.path = path;
    this.onMessage = onMessage;
    this.onState = onState;
    this.lastId = null;
    this.retryMs = 1000; // the service may set it with a `retry:` field
    this.delayMs = this.retryMs; // backs off while connections keep failing
    this.abort = new AbortController();
    this.closed = false;
    // settles once the service has subscribed us (its first bytes arrived) or the first try failed:
    // a REST load started after this misses nothing that the stream will not bring
    this.ready = new Promise((resolve) => { this._ready = resolve; });
  }

  start() { this._connect(); return this; }

  close() { this.closed = true; this.abort.abort(); }

  async _connect() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
    try {
      const reply = await authFetch(this.path, { headers, signal: this.abort.signal, cache: "no-store" });
      if (reply.status === 404) { this.onState("unavailable"); this._ready(); return; }
      if (!reply.ok || !reply.body) throw new Error(`stream: HTTP ${reply.status}`);
      await this._read(reply.body);
    } catch (err) {
      if (this.closed) return;
    }
    this._ready();
    if (this.closed) return;
    this.onState("retry");
    // one timer per lost connection (backing off), not a polling loop
    setTimeout(() => this._connect(), this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, 15000);
  }

  async _read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let message = { id: null, event: "message", data: [] };
    for (let first = true; ; first = false) {
      const { value, done } = await reader.read();
      if (done) return;
      if (first) this._opened();
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (cut === buffer.length - 1 && buffer[cut] === "\r") break; // maybe half of a CRLF
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") { this._dispatch(message); message = { id: null, event: "message", data: [] }; }
        else this._field(line, message);
      }
    }
  }

  _opened() {
    this.delayMs = this.retryMs;
    this.onState("open");
    this._ready();
  }

  _field(line, message) {
    if (line.startsWith(":")) return; // heartbeat or comment
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") message.id = value;
    else if (name === "event") message.event = value;
    else if (name === "data") message.data.push(value);
    else if (name === "retry" && /^\d+$/.test(value)) this.retryMs = this.delayMs = Number(value);
  }

  _dispatch(message) {
    if (message.id !== null && /^\d+$/.test(message.id)) this.lastId = message.id; // a string: ids may pass 2**53
    if (!message.data.length) return;
    let data;
    try { data = JSON.parse(message.data.join("\n")); } catch { return; }
    try { this.onMessage(message.event, data, this.lastId); } catch (err) { reportError(err); }
  }
}
