// Hash routes: #/ (runs), #/run/<id>, #/compare?runs=a,b. One view at a time; leaving a
// view closes its streams.

import { charts } from "./charts.js";
import { ComparePage } from "./compare.js";
import { RunPage } from "./run.js";
import { renderRuns } from "./runs.js";
import { el } from "./util.js";

const main = document.getElementById("main");
const marks = { loaded: null, drawn: new Map() };
let view = null;

// what the browser tests read: charts by id, the load mark, when steps were first drawn
window.__lm = { charts, marks, view: () => view };

function crumbs(parts) {
  document.getElementById("crumbs").replaceChildren(el("a", { href: "#/" }, "runs"),
    ...parts.map(([text, href]) => el("a", { href }, text)));
}

function toast(alert) {
  const box = document.getElementById("alerts");
  const node = el(`div.alert.${String(alert.level || "WARN").replace(/[^\w-]/g, "_")}`, { role: "alert" },
    el("button", { "aria-label": "dismiss", onclick: () => node.remove() }, "×"),
    el("b", {}, `${alert.run_id}: ${alert.name}`), el("div", {}, alert.message || `${alert.key} = ${alert.value}`));
  box.append(node);
  while (box.children.length > 5) box.firstChild.remove();
}

function streamState(state) {
  const live = document.getElementById("live");
  live.className = `live ${state === "open" ? "on" : "off"}`;
  live.textContent = state === "open" ? "live" : state === "unavailable" ? "no stream" : "reconnecting";
}

let generation = 0; // bumped on each navigation: a slow view must not draw over the next one

async function route() {
  view?.close();
  view = null;
  const mine = ++generation;
  try {
    const hash = decodeURI(location.hash || "#/");
    if (hash.startsWith("#/run/")) {
      const runId = decodeURIComponent(location.hash.slice(6));
      crumbs([[runId, location.hash]]);
      view = new RunPage(main, runId, marks, { stream: streamState, alert: toast });
      await view.open();
    } else if (hash.startsWith("#/compare")) {
      const runs = (new URLSearchParams(hash.split("?")[1] || "").get("runs") || "").split(",").filter(Boolean);
      crumbs([["compare", location.hash]]);
      view = new ComparePage(main, runs);
      await view.open();
    } else {
      crumbs([]);
      const runs = await renderRuns(main, () => mine === generation);
      if (mine === generation) view = runs;
    }
  } catch (err) {
    if (mine === generation) main.replaceChildren(el("p.error", {}, `could not load: ${err.message}`));
  }
}

window.addEventListener("hashchange", route);
route();
