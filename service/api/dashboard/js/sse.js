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
    this.retryMs = 1000;
    this.abort = new AbortController();
    this.closed = false;
  }

  start() { this._connect(); return this; }

  close() { this.closed = true; this.abort.abort(); }

  async _connect() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
    try {
      const reply = await authFetch(this.path, { headers, signal: this.abort.signal, cache: "no-store" });
      if (reply.status === 404) { this.onState("unavailable"); return; }
      if (!reply.ok || !reply.body) throw new Error(`stream: HTTP ${reply.status}`);
      this.onState("open");
      this.retryMs = 1000;
      await this._read(reply.body);
    } catch (err) {
      if (this.closed) return;
    }
    if (this.closed) return;
    this.onState("retry");
    // one timer per lost connection (backing off), not a polling loop
    setTimeout(() => this._connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 15000);
  }

  async _read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let message = { id: null, event: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") { this._dispatch(message); message = { id: null, event: "message", data: [] }; }
        else this._field(line, message);
      }
    }
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
    else if (name === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
  }

  _dispatch(message) {
    if (message.id !== null && /^\d+$/.test(message.id)) this.lastId = message.id; // a string: ids may pass 2**53
    if (!message.data.length) return;
    let data;
    try { data = JSON.parse(message.data.join("\n")); } catch { return; }
    try { this.onMessage(message.event, data, this.lastId); } catch (err) { reportError(err); }
  }
}
