// The runs list: status, step, ranks, sinks, age, alerts; pick runs to compare.

import { api } from "./api.js";
import { ago, badge, el, worstLevel } from "./util.js";

function sinkCell(sinks) {
  return Object.entries(sinks || {}).map(([name, s]) => {
    const bad = s && (s.failures > 0 || s.state === "failed" || s.state === "error");
    return el(`span.badge${bad ? ".WARN" : ""}`, { title: JSON.stringify(s) }, `${name}${s?.state ? `: ${s.state}` : ""}`);
  });
}

function row(run, info, toggle) {
  const alerts = info?.alerts || [];
  const live = info ? info.ranks.filter((r) => r.session).length : null;
  const level = worstLevel(alerts);
  return el("tr", { dataset: { run: run.run_id } },
    el("td", {}, el("input", { type: "checkbox", "aria-label": `compare ${run.run_id}`,
      onchange: (e) => toggle(run.run_id, e.target.checked) })),
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}` }, run.run_id)),
    el("td", {}, badge(run.status || "?")),
    el("td.num.step", {}, run.watermark ?? "–"),
    el("td.num", {}, live == null ? run.world_size : `${live}/${run.world_size}`),
    el("td", {}, info ? sinkCell(info.sinks) : "–"),
    el("td", { title: info?.updated_at || info?.created_at || "" }, ago(info?.updated_at ?? info?.created_at)),
    el("td.alerts-count", {}, alerts.length ? badge(`${alerts.length}`, level || "WARN") : "0"));
}

/** The runs list; ``current()`` says whether the user is still on it when the replies are in. */
export async function renderRuns(main, current = () => true) {
  const { runs } = await api.runs();
  const infos = await Promise.all(runs.map((r) => api.run(r.run_id).catch(() => null)));
  if (!current()) return { close() {} };
  const picked = new Set();
  const compare = el("button#compare", { disabled: true, title: "tick two or more runs", onclick: () => {
    location.hash = `#/compare?runs=${[...picked].map(encodeURIComponent).join(",")}`;
  } }, "Compare selected");
  const toggle = (runId, on) => {
    if (on) picked.add(runId); else picked.delete(runId);
    compare.disabled = picked.size < 2;
  };
  const table = el("table#runs", {},
    el("thead", {}, el("tr", {}, ["", "run", "status", "step", "ranks", "sinks", "updated", "alerts"].map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((r, i) => row(r, infos[i], toggle))));
  main.replaceChildren(
    el("h1", {}, "Runs"),
    el("div.toolbar", {}, compare, el("button", { onclick: () => renderRuns(main, current) }, "Refresh"),
      el("span.muted", {}, `${runs.length} run(s)`)),
    runs.length ? table : el("p.muted", {}, "No runs yet."));
  return { close() {} };
}
