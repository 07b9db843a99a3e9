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
