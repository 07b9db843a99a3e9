// What a metric is. Live emissions carry their identity ("metrics" in each stream message),
// and /metrics and /history give each key's "metric"; the page uses them as given. Only a
// value recorded before the service kept identities (a run restored from an older snapshot)
// comes as a bare key: for those the page derives the identity the service would have sent
// (service/core/naming.py; a browser test holds the two to each other).

const SCALARS = [["train/lr/", "lr"], ["pipeline/", "pipeline"], ["gradnorm/", "gradnorm"], ["custom/", "custom"]];

/** The identity of ``key`` as the stream would give it; ``tasks`` are the run's task names. */
export function parseKey(key, tasks) {
  const id = { kind: "window", statistic: key, phase: null, window: null, task: null, family: null, label: null,
               direction: null };
  if (key.startsWith("final_")) return { ...id, kind: "final", statistic: key.slice(6) };
  if (key.startsWith("core/")) {
    const [, statistic, task] = key.split("/");
    const phase = /^(train|val)_/.test(statistic) ? statistic.split("_")[0] : null;
    return { ...id, kind: "core", statistic, phase, task: task ?? null };
  }
  for (const [prefix, kind] of SCALARS) {
    if (key.startsWith(prefix)) return { ...id, kind, statistic: key.slice(prefix.length) };
  }
  const parts = key.split("/");
  id.phase = parts[0];
  let name = parts.slice(1).join("/");
  if (parts[1] === "subset" && parts.length >= 5) {
    [id.family, id.label] = [parts[2], parts[3]];
    name = parts.slice(4).join("/");
  }
  id.window = id.phase === "train" ? "step" : "epoch";
  if (name.startsWith("step_avg_")) [id.window, name] = ["step_avg", name.slice(9)];
  else if (id.phase === "train" && name.startsWith("epoch_") && name !== "epoch_duration_sec") {
    [id.window, name] = ["epoch", name.slice(6)];
  } else if (name === "epoch_duration_sec") id.window = "epoch";
  const split = splitTask(name, tasks);
  const kind = RATES.has(split.statistic) ? "rate" : "window";
  return { ...id, ...split, kind, direction: DIRECTIONS[split.statistic] ?? null };
}

/** ``acc1_<task>`` → statistic ``acc1`` and the task (identities that already split it pass through). */
export function splitTask(name, tasks) {
  for (const stat of ["acc1", "acc3", "loss"]) {
    const task = name.startsWith(`${stat}_`) ? name.slice(stat.length + 1) : null;
    if (task !== null && (!tasks || tasks.includes(task))) return { statistic: stat, task };
  }
  return { statistic: name, task: null };
}

function normal(id, tasks) {
  if (id.task || !id.statistic) return id;
  return { ...id, ...splitTask(id.statistic, tasks) };
}

const TOPK = { acc1: "top-1", acc3: "top-3" };
const RATES = new Set(["samples_per_sec", "eta_sec", "epoch_duration_sec", "avg_samples_per_sec"]);
const DIRECTIONS = { loss: "min", acc1: "max", acc3: "max", chain_accuracy: "max", partial_chain_accuracy: "max" };
const firstPart = (name) => name.split("/")[0];

/**
 * Where a metric goes on the run page: ``{chart, title, label, axis, points}``, or null when it
 * is not charted there (core/final values are cards, subset metrics are in the drill-down).
 */
export function place(rawId, tasks) {
  const id = normal(rawId, tasks);
  if (id.kind === "lr") return { chart: "loss", title: "loss and learning rate", label: `lr ${id.statistic}`, axis: "lr" };
  if (["pipeline", "gradnorm", "custom"].includes(id.kind)) {
    const group = id.kind === "custom" ? id.statistic : firstPart(id.statistic);
    return { chart: `${id.kind}/${group}`, title: `${id.kind}: ${group}`, label: id.statistic };
  }
  if (!["window", "rate"].includes(id.kind) || id.family || id.window === "step_avg") return null;
  const points = id.window === "epoch";
  const when = `${id.phase}${points && id.phase === "train" ? " epoch" : ""}`;
  if (TOPK[id.statistic] && id.task) {
    return { chart: `task/${id.task}`, title: `${id.task}: top-1 / top-3 (%)`, label: `${when} ${TOPK[id.statistic]}`, points };
  }
  if (id.statistic === "loss") {
    if (id.task) return { chart: "task_loss", title: "task losses", label: `${when} ${id.task}`, points };
    return { chart: "loss", title: "loss and learning rate", label: `${when} loss`, points };
  }
  if (id.statistic === "chain_accuracy" || id.statistic === "partial_chain_accuracy") {
    const what = id.statistic === "chain_accuracy" ? "chain" : "partial chain";
    return { chart: "chain", title: "chain and partial chain accuracy (%)", label: `${when} ${what}`, points };
  }
  if (id.kind === "rate") return { chart: `timing/${id.statistic}`, title: id.statistic, label: when, points };
  return { chart: `other/${id.statistic}`, title: id.statistic, label: when, points };
}

/** Section of the run page a chart belongs to. */
export function section(chartId) {
  const head = chartId.split("/")[0];
  if (head === "pipeline" || head === "gradnorm" || head === "custom" || head === "timing") return head;
  return "training";
}

/** Subset metrics: ``{family, label, metric}`` where metric names a column, or null. */
export function subsetOf(rawId, tasks) {
  const id = normal(rawId, tasks);
  if (id.kind !== "window" || !id.family || id.window === "step_avg") return null;
  const metric = id.task ? `${TOPK[id.statistic] || id.statistic} ${id.task}` : id.statistic.replaceAll("_", " ");
  return { family: id.family, label: id.label, phase: id.phase, window: id.window, metric };
}
