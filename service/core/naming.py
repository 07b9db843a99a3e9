"""The one function that builds every metric key (DESIGN §5).

Windows: ``step`` (train/* windows at the STEP interval), ``step_avg`` (train/step_avg_*
over the WANDB interval), ``epoch`` (``train/epoch_*`` for train, plain ``val/*`` for other
phases). Subset metrics live under ``<phase>/subset/<family>/<label>/``.

>>> metric_key("window", "acc1_genus", phase="train", window="step")
'train/acc1_genus'
>>> metric_key("window", "loss", phase="train", window="epoch")
'train/epoch_loss'
>>> metric_key("window", "chain_accuracy", phase="val", window="epoch", family="rarity", label="rare")
'val/subset/rarity/rare/chain_accuracy'
>>> metric_key("core", "val_acc1", task="genus")
'core/val_acc1/genus'
>>> metric_key("final", "acc1_genus", phase="val")
'final_val_acc1_genus'
"""

from __future__ import annotations

from functools import lru_cache

from service.core.emission import Direction, MetricId
from service.core.errors import InvalidInput

WINDOWS = ("step", "step_avg", "epoch")
SCALAR_PREFIX = {"lr": "train/lr/", "pipeline": "pipeline/", "gradnorm": "gradnorm/", "custom": "custom/"}


def metric_key(
    kind: str,
    name: str,
    *,
    phase: str = "train",
    window: str = "step",
    family: str | None = None,
    label: str | None = None,
    task: str | None = None,
) -> str:
    """Build the key of a metric.

    Args:
        kind: ``window`` (a computed window metric), ``lr``/``pipeline``/``gradnorm``/
            ``custom`` (scalars), ``core`` (``core/`` keys), ``final`` (summary keys).
        name: the metric suffix (``loss``, ``acc1_<task>``, ...) or scalar name.
        phase: the phase of a window or final metric.
        window: ``step``, ``step_avg`` or ``epoch`` for window metrics.
        family: subset family, with ``label``, for subset metrics.
        label: subset label.
        task: the task of a per-task core key.

    Returns:
        The key as wandb and the HTTP API name it.

    Raises:
        InvalidInput: on an unknown kind or window.
    """
    if kind == "window":
        return _window_key(name, phase, window, family, label)
    if kind in SCALAR_PREFIX:
        return SCALAR_PREFIX[kind] + name
    if kind == "core":
        return f"core/{name}" + (f"/{task}" if task else "")
    if kind == "final":
        return f"final_{phase}_{name}"
    raise InvalidInput(f"metric_key: unknown kind {kind!r}")


def _window_key(name: str, phase: str, window: str, family: str | None, label: str | None) -> str:
    if window not in WINDOWS:
        raise InvalidInput(f"metric_key: unknown window {window!r} (expected one of {WINDOWS})")
    if window == "step_avg":
        name = f"step_avg_{name}"
    elif window == "epoch" and phase == "train" and not name.startswith("epoch_"):
        name = f"epoch_{name}"
    if family is not None:
        return f"{phase}/subset/{family}/{label}/{name}"
    return f"{phase}/{name}"


# ---------------------------------------------------------------- identities (what a key means)

_PER_TASK = ("acc1", "acc3", "loss")
_RATES = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "avg_samples_per_sec")
_CORE_DIRECTIONS: dict[str, Direction] = {
    "train_loss": "min", "val_loss": "min", "train_chain_acc": "max", "val_chain_acc": "max",
    "train_partial_chain_acc": "max", "val_partial_chain_acc": "max", "val_acc1": "max"}


def direction_of(statistic: str) -> Direction:
    """Best tracking of a window statistic: losses go down, accuracies up.

    >>> direction_of("loss"), direction_of("acc3"), direction_of("samples_per_sec")
    ('min', 'max', None)
    """
    if statistic == "loss":
        return "min"
    if statistic in ("acc1", "acc3", "chain_accuracy", "partial_chain_accuracy"):
        return "max"
    return None


#: identities are immutable and a run emits the same few thousand again and again: each is built once
_IDENTITIES = 1 << 16


@lru_cache(maxsize=_IDENTITIES)
def window_metric(suffix: str, *, phase: str, window: str, family: str | None = None,
                  label: str | None = None) -> MetricId:
    """The identity of a window value whose accumulator suffix is ``suffix``.

    >>> m = window_metric("acc1_taxa_L10", phase="val", window="epoch", family="rarity", label="rare")
    >>> (m.key, m.statistic, m.task, m.direction)
    ('val/subset/rarity/rare/acc1_taxa_L10', 'acc1', 'taxa_L10', 'max')
    """
    head, sep, rest = suffix.partition("_")
    statistic, task = (head, rest) if sep and head in _PER_TASK else (suffix, None)
    kind = "rate" if suffix in _RATES else "window"
    key = metric_key("window", suffix, phase=phase, window=window, family=family, label=label)
    return MetricId(key, kind, statistic, phase, window, task, family, label, direction_of(statistic))


@lru_cache(maxsize=_IDENTITIES)
def scalar_metric(kind: str, name: str, higher_is_better: bool | None = None) -> MetricId:
    """The identity of an lr/pipeline/gradnorm/custom scalar."""
    direction: Direction = None if higher_is_better is None else ("max" if higher_is_better else "min")
    return MetricId(metric_key(kind, name), kind, name, direction=direction)


@lru_cache(maxsize=_IDENTITIES)
def core_metric(name: str, task: str | None = None) -> MetricId:
    """The identity of a ``core/`` key (``core/train_loss``, ``core/val_acc1/<task>``, ...)."""
    phase = name.split("_", 1)[0] if name.startswith(("train_", "val_")) else None
    return MetricId(metric_key("core", name, task=task), "core", name, phase=phase, task=task,
                    direction=_CORE_DIRECTIONS.get(name))


def final_metric(name: str, phase: str, higher_is_better: bool) -> MetricId:
    """The identity of a ``final_*`` summary value (the best of an epoch-level metric)."""
    head, sep, rest = name.partition("_")
    statistic, task = (head, rest) if sep and head in _PER_TASK else (name, None)
    return MetricId(metric_key("final", name, phase=phase), "final", statistic, phase=phase, task=task,
                    direction="max" if higher_is_better else "min")
