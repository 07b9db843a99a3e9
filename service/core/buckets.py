"""Where a run's records wait: per-step buckets until every rank completed the step, and
the open windows of the windowed groups."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from service.core.scalars import ScalarTable
from service.core.state import Accumulator

WINDOW_GROUPS = ("step", "wandb", "console")
FIRE_ORDER = ("step", "wandb", "console", "lr", "pipeline")


@dataclass
class StepBucket:
    """Records of one train step waiting for every rank to complete it."""

    acc: Accumulator | None = None
    scalars: dict[str, ScalarTable] = field(default_factory=dict)


@dataclass
class Window:
    """An open window of a windowed group."""

    acc: Accumulator
    last_fire: int = 0
    prev_t_max: float = -math.inf
