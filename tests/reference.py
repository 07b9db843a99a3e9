"""An independent reference of the metric semantics (DESIGN §3-§5), written differently.

Per-sample Python loops over plain lists, exact ``Fraction`` arithmetic, whole-run
grouping instead of incremental windows: nothing here shares code with service/core
except the key strings, which are spelled out literally.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any


@dataclass
class Rec:
    """One batch as plain lists (as a test generates it)."""

    rank: int
    step: int
    epoch: int
    phase: str
    time: float
    targets: dict[str, list[int]]
    topk: dict[str, list[list[int]]]
    loss: float | None = None
    task_losses: dict[str, float] = field(default_factory=dict)
    subsets: dict[str, list[str]] = field(default_factory=dict)
    sample_losses: list[float] | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.targets.values())))


def pct(num: int, den: int) -> float:
    return float(Fraction(100 * num, den))


def window_metrics(recs: list[Rec], tasks: list[tuple[str, int]]) -> dict[tuple[Any, Any, str], float]:
    """``{(family, label, suffix): value}`` over the samples of ``recs``."""
    out: dict[tuple[Any, Any, str], float] = {}
    samples = [(rec, i) for rec in recs for i in range(rec.size)]
    if not samples:
        return out
    out.update(_group_metrics(None, None, samples, tasks))
    loss_num, loss_den = Fraction(0), 0
    for rec in recs:
        if rec.loss is not None:
            loss_num += Fraction(rec.loss) * rec.size
            loss_den += rec.size
    if loss_den:
        out[(None, None, "loss")] = float(loss_num / loss_den)
    for name, _ in tasks:
        parts = [(Fraction(r.task_losses[name]) * r.size, r.size) for r in recs if name in r.task_losses]
        if parts:
            out[(None, None, f"loss_{name}")] = float(sum(p[0] for p in parts) / sum(p[1] for p in parts))
    out.update(_null_breakdown(samples, tasks))
    families = sorted({f for rec in recs for f in rec.subsets})
    for family in families:
        by_label: dict[str, list[tuple[Rec, int]]] = defaultdict(list)
        for rec, i in samples:
            if family in rec.subsets:
                by_label[rec.subsets[family][i]].append((rec, i))
        for label, members in by_label.items():
            out.update(_group_metrics(family, label, members, tasks))
            with_loss = [(r, i) for r, i in members if r.sample_losses is not None]
            if with_loss:
                out[(family, label, "loss")] = float(sum(Fraction(r.sample_losses[i]) for r, i in with_loss) / len(with_loss))
    return out


def _group_metrics(family, label, samples, tasks):
    out = {}
    n = len(samples)
    chain = partial = partial_den = 0
    for rec, i in samples:
        ok_all = True
        ok_nonnull = True
        any_nonnull = False
        for name, null in tasks:
            hit = rec.topk[name][i][0] == rec.targets[name][i]
            ok_all = ok_all and hit
            if rec.targets[name][i] != null:
                any_nonnull = True
                ok_nonnull = ok_nonnull and hit
        chain += ok_all
        if any_nonnull:
            partial_den += 1
            partial += ok_nonnull
    out[(family, label, "chain_accuracy")] = pct(chain, n)
    if partial_den:
        out[(family, label, "partial_chain_accuracy")] = pct(partial, partial_den)
    for name, _ in tasks:
        top1 = sum(1 for rec, i in samples if rec.topk[name][i][0] == rec.targets[name][i])
        top3 = sum(1 for rec, i in samples if rec.targets[name][i] in rec.topk[name][i][:3])
        out[(family, label, f"acc1_{name}")] = pct(top1, n)
        out[(family, label, f"acc3_{name}")] = pct(top3, n)
    return out


def _null_breakdown(samples, tasks):
    out = {}
    for name, null in tasks:
        for label, keep in (("null", True), ("non_null", False)):
            members = [(r, i) for r, i in samples if (r.targets[name][i] == null) == keep]
            if members:
                top1 = sum(1 for r, i in members if r.topk[name][i][0] == r.targets[name][i])
                top3 = sum(1 for r, i in members if r.targets[name][i] in r.topk[name][i][:3])
                out[("null", label, f"acc1_{name}")] = pct(top1, len(members))
                out[("null", label, f"acc3_{name}")] = pct(top3, len(members))
    return out


def key(phase: str, window: str, family: Any, label: Any, suffix: str) -> str:
    if window == "step_avg":
        suffix = "step_avg_" + suffix
    elif window == "epoch" and phase == "train":
        suffix = "epoch_" + suffix
    if family is None:
        return f"{phase}/{suffix}"
    return f"{phase}/subset/{family}/{label}/{suffix}"


def expected_history(recs: list[Rec], tasks: list[tuple[str, int]], intervals: dict[str, int],
                     scalars: list[tuple[int, str, int, dict[str, float]]] | None = None,
                     last_step: int | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every key's series for a finished run (timing keys excluded).

    ``scalars`` are ``(rank, kind, step, values)``; ``last_step`` is the final step.
    """
    hist: dict[str, list[tuple[int, float]]] = defaultdict(list)
    train = [r for r in recs if r.phase == "train"]
    last = last_step if last_step is not None else max(r.step for r in train)
    _windows(hist, train, tasks, intervals["step"], last, "step")
    _windows(hist, train, tasks, intervals["wandb"], last, "step_avg")
    for kind, prefix in (("lr", "train/lr/"), ("pipeline", "pipeline/")):
        _scheduled_scalars(hist, scalars or [], kind, prefix, intervals[kind], last)
    for kind, prefix in (("gradnorm", "gradnorm/"), ("custom", "custom/")):
        _arriving_scalars(hist, scalars or [], kind, prefix)
    for (phase, epoch) in sorted({(r.phase, r.epoch) for r in recs}):
        members = [r for r in recs if (r.phase, r.epoch) == (phase, epoch)]
        step = max(r.step for r in members)
        for (family, label, suffix), value in window_metrics(members, tasks).items():
            hist[key(phase, "epoch", family, label, suffix)].append((step, value))
    return {k: sorted(v) for k, v in hist.items()}


def _windows(hist, train, tasks, interval, last, window):
    if not interval:
        return
    ends = list(range(interval, last + 1, interval))
    if not ends or ends[-1] != last:
        ends.append(last)
    start = 0
    for end in ends:
        members = [r for r in train if start < r.step <= end]
        start = end
        for (family, label, suffix), value in window_metrics(members, tasks).items():
            if window == "step_avg" and family is not None:
                continue
            hist[key("train", window, family, label, suffix)].append((end, value))


def _scheduled_scalars(hist, scalars, kind, prefix, interval, last):
    if not interval:
        return
    for fire in range(interval, last + 1, interval):
        if not any(k == kind and fire - interval < step <= fire for _, k, step, _ in scalars):
            continue  # nothing reported since the previous firing step: nothing new to log
        latest: dict[tuple[int, str], tuple[int, float]] = {}
        for rank, k, step, values in scalars:
            if k != kind or step > fire:
                continue
            for name, value in values.items():
                if (rank, name) not in latest or latest[(rank, name)][0] <= step:
                    latest[(rank, name)] = (step, value)
        names = sorted({name for _, name in latest})
        for name in names:
            vals = [v for (r, n), (_, v) in latest.items() if n == name]
            hist[prefix + name].append((fire, float(sum(Fraction(v) for v in vals) / len(vals))))


def _arriving_scalars(hist, scalars, kind, prefix):
    by_step: dict[tuple[int, str], dict[int, float]] = defaultdict(dict)
    for rank, k, step, values in scalars:
        if k == kind:
            for name, value in values.items():
                by_step[(step, name)][rank] = value
    for (step, name), per_rank in sorted(by_step.items()):
        hist[prefix + name].append((step, float(sum(Fraction(v) for v in per_rank.values()) / len(per_rank))))


def expected_summary(recs: list[Rec], tasks: list[tuple[str, int]]) -> dict[str, float]:
    """final_* = best epoch value of every global metric (min loss, max accuracy)."""
    best: dict[str, float] = {}
    for (phase, epoch) in sorted({(r.phase, r.epoch) for r in recs}):
        members = [r for r in recs if (r.phase, r.epoch) == (phase, epoch)]
        for (family, _, suffix), value in window_metrics(members, tasks).items():
            if family is not None:
                continue
            name = f"final_{phase}_{suffix}"
            lower = suffix.startswith("loss")
            if name not in best or (value < best[name] if lower else value > best[name]):
                best[name] = value
    return best
