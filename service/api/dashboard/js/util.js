// Small DOM and formatting helpers.

/** ``el("td#id.num", {title}, child...)``: an element with classes, attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const parts = tag.match(/^([a-z0-9]+)(?:#([\w-]+))?((?:\.[\w-]+)*)$/i);
  if (!parts) throw new Error(`el: bad tag ${JSON.stringify(tag)} (expected name#id.class)`);
  const [, name, id, dotted] = parts;
  const classes = dotted.split(".").filter(Boolean);
  const node = document.createElement(name);
  if (id) node.id = id;
  if (classes.length) node.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A number as the page shows it: integers exact, others to 5 significant digits. */
export function fmt(value) {
  if (value == null || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  if (!Number.isFinite(value)) return String(value);
  return String(+value.toPrecision(5));
}

/** Seconds since an epoch time in seconds, milliseconds or an ISO string; null if unknown. */
export function secondsSince(when) {
  if (when == null) return null;
  let ms = typeof when === "number" ? (when > 1e12 ? when : when * 1000) : Date.parse(when);
  if (!Number.isFinite(ms)) return null;
  return Math.max(0, (Date.now() - ms) / 1000);
}

export function ago(when) {
  const s = secondsSince(when);
  if (s == null) return "–";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

export function badge(text, cls = text) { return el(`span.badge.${String(cls).replace(/[^\w-]/g, "_")}`, {}, text); }

const LEVELS = { INFO: 0, WARN: 1, ERROR: 2 };
export function worstLevel(alerts) {
  return alerts.reduce((w, a) => (LEVELS[a.level] > (LEVELS[w] ?? -1) ? a.level : w), null);
}
