// Rank progress: each rank's completed step, its lag behind the fastest, when it was last
// seen, its session and fenced sessions. The rank furthest behind is the straggler.

import { ago, el } from "./util.js";

/** Lag of each rank behind the fastest one (the service's when it says), and the stragglers (largest lag > 0). */
export function lags(ranks) {
  const fastest = Math.max(...ranks.map((r) => r.completed ?? -1));
  const lag = ranks.map((r) => r.lag ?? fastest - (r.completed ?? -1));
  const worst = Math.max(...lag);
  return { lag, stragglers: new Set(worst > 0 ? ranks.filter((_, i) => lag[i] === worst).map((r) => r.rank) : []) };
}

export function ranksTable(info) {
  const ranks = info.ranks || [];
  if (!ranks.length) return el("p.muted", {}, "no ranks");
  const { lag, stragglers } = lags(ranks);
  const total = info.total_steps || 1;
  const rows = ranks.map((r, i) => {
    const pct = Math.max(0, Math.min(100, ((r.completed + 1) / total) * 100));
    const cls = [stragglers.has(r.rank) ? "straggler" : "", r.session ? "" : "no-session"].filter(Boolean).join(".");
    return el(`tr${cls ? `.${cls}` : ""}`, { dataset: { rank: r.rank, lag: lag[i] } },
      el("td", {}, `rank ${r.rank}`),
      el("td.num.completed", {}, r.completed),
      el("td", {}, el("div.bar", { title: `${pct.toFixed(1)}% of ${total}` }, el("span", { style: `width:${pct}%` }))),
      el("td.num.lag", {}, lag[i]),
      el("td.num", {}, r.last_step),
      el("td", { dataset: { since: r.last_seen ?? "" } }, ago(r.last_seen)),
      el("td", { title: r.session || "" }, r.session ? r.session.slice(0, 8) : "none"),
      el("td.num.fenced", { title: "sessions of this rank fenced by a newer one" }, r.fenced_sessions ?? "–"));
  });
  return el("table.ranks", { id: "ranks" },
    el("thead", {}, el("tr", {}, ["rank", "completed", "progress", "lag", "last step", "last seen", "session", "fenced"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

/** Refresh "x s ago" texts in place (a local clock; no request). */
export function tickAges(root) {
  for (const cell of root.querySelectorAll("[data-since]")) {
    if (cell.dataset.since) cell.textContent = ago(isNaN(cell.dataset.since) ? cell.dataset.since : Number(cell.dataset.since));
  }
}
