"""The ``EXPERIMENT`` section: which wandb run a service run writes to (DESIGN §5b).

Options come from ``EXPERIMENT.WANDB.{ENABLED, RESUME, RUN_ID, PROJECT, ENTITY, TAGS,
NOTES}`` and fall back to ``EXPERIMENT.{PROJECT, GROUP, NAME, TAGS, NOTES}`` (the linnaeus
layout). Empty strings and empty lists count as "not set", as in linnaeus defaults.
``EXPERIMENT.WANDB.KEY`` is never used: the service authenticates with its own
environment, and :func:`without_secrets` strips the key before a config is stored anywhere.

Decisions:

- ``ENABLED`` defaults to true: posting a config to the service is the opt-in.
- ``PROJECT`` defaults to ``"linnaeus-metrics"``, the display name to ``EXPERIMENT.NAME``
  and then the service run id.
- The wandb run id is ``RUN_ID`` when given, else derived from the service run id (the id
  itself when wandb accepts it, else a readable prefix plus a hash), so that the same
  service run always writes to the same wandb run.
- ``RESUME``: absent → ``"allow"`` (a service restart continues the run it had started);
  true, ``"allow"``, ``"auto"`` → ``"allow"`` (``auto`` relies on a per-process resume
  file, meaningless in a service with many runs); ``"must"``/``"never"`` as given;
  false → ``None`` (wandb's default: always a new run).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client._rules import RUN_ID_CHARSET
from service.core.errors import ConfigError

DEFAULT_PROJECT = "linnaeus-metrics"
WANDB_KEYS = ("ENABLED", "RESUME", "RUN_ID", "PROJECT", "ENTITY", "TAGS", "NOTES", "KEY")
_RESUME = {"allow": "allow", "auto": "allow", "must": "must", "never": "never"}
_SAFE_ID = re.compile(rf"[{RUN_ID_CHARSET}]{{1,64}}")  # run-id characters, within wandb's 64
_RUN_ID_FORBIDDEN = set(":;,#?/'\\% ")
_PROJECT_FORBIDDEN = set("/\\#?%:")


@dataclass(frozen=True)
class WandbOptions:
    """How one service run maps onto one wandb run.

    Attributes:
        enabled: whether the run goes to wandb at all.
        project: wandb project.
        entity: wandb entity, ``None`` for the key's default entity.
        name: display name of the wandb run.
        group: wandb group (``EXPERIMENT.GROUP``).
        tags: wandb tags.
        notes: wandb notes.
        run_id: the wandb run id (stable per service run).
        resume: ``"allow"``, ``"must"``, ``"never"`` or ``None`` (wandb's ``resume``).
        warnings: things the caller should log (an ignored ``KEY``); never the key itself.
    """

    enabled: bool
    project: str
    entity: str | None
    name: str
    group: str | None
    tags: tuple[str, ...]
    notes: str | None
    run_id: str
    resume: str | None
    warnings: tuple[str, ...] = ()


def resolve_wandb_options(config: Mapping[str, Any] | None, run_id: str) -> WandbOptions:
    """Read the wandb options of a run from its training config.

    Args:
        config: the run's config (``{"METRICS": ..., "EXPERIMENT": ...}``) or ``None``.
        run_id: the service run id, used for the default name and wandb run id.

    Returns:
        The resolved options.

    Raises:
        ConfigError: a value has the wrong type or ``EXPERIMENT.WANDB`` has unknown keys;
            the message names the key and the value.

    >>> cfg = {"EXPERIMENT": {"PROJECT": "birds", "NAME": "swin-l", "GROUP": "ablation",
    ...                       "WANDB": {"ENABLED": True, "RESUME": False, "KEY": "secret"}}}
    >>> opts = resolve_wandb_options(cfg, "exp42")
    >>> opts.project, opts.name, opts.group, opts.run_id, opts.resume
    ('birds', 'swin-l', 'ablation', 'exp42', None)
    >>> opts.warnings
    ('EXPERIMENT.WANDB.KEY is ignored: the service uses its own WANDB_API_KEY',)
    >>> resolve_wandb_options(None, "exp42").resume
    'allow'
    """
    experiment = _section(config, "EXPERIMENT", "EXPERIMENT")
    wandb = _section(experiment, "WANDB", "EXPERIMENT.WANDB")
    unknown = sorted(str(k) for k in wandb if k not in WANDB_KEYS)
    if unknown:
        raise ConfigError(
            f"EXPERIMENT.WANDB: unknown keys {unknown} (allowed: {', '.join(WANDB_KEYS)})"
        )
    return WandbOptions(
        enabled=_bool(wandb, "ENABLED", default=True),
        project=_project(wandb, experiment),
        entity=_text(wandb, "WANDB.ENTITY"),
        name=_text(experiment, "NAME") or run_id,
        group=_text(experiment, "GROUP"),
        tags=_tags(wandb, "WANDB.TAGS") or _tags(experiment, "TAGS"),
        notes=_text(wandb, "WANDB.NOTES") or _text(experiment, "NOTES"),
        run_id=_run_id(wandb) or derive_wandb_run_id(run_id),
        resume=_resume(wandb),
        warnings=_key_warning(wandb),
    )


def derive_wandb_run_id(run_id: str) -> str:
    """A wandb run id that is stable for ``run_id`` and acceptable to wandb.

    >>> derive_wandb_run_id("exp42")
    'exp42'
    >>> derive_wandb_run_id("a" * 100)[:41], len(derive_wandb_run_id("a" * 100))
    ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-', 57)
    """
    if _SAFE_ID.fullmatch(run_id):
        return run_id
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    prefix = re.sub(rf"[^{RUN_ID_CHARSET}]+", "-", run_id)[:40].strip("-.")
    return f"{prefix}-{digest}" if prefix else f"run-{digest}"


def without_secrets(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``config`` without ``EXPERIMENT.WANDB.KEY`` (safe to store or log)."""
    cleaned: dict[str, Any] = copy.deepcopy(dict(config or {}))
    experiment = cleaned.get("EXPERIMENT")
    if isinstance(experiment, dict) and isinstance(experiment.get("WANDB"), dict):
        experiment["WANDB"].pop("KEY", None)
    return cleaned


def _section(parent: Mapping[str, Any] | None, key: str, path: str) -> Mapping[str, Any]:
    """The sub-mapping ``parent[key]``, empty when absent."""
    value = None if parent is None else parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _bool(section: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"EXPERIMENT.WANDB.{key} must be true or false, got {value!r}")
    return value


def _text(section: Mapping[str, Any], path: str) -> str | None:
    """A string option (``path`` is relative to EXPERIMENT); empty means unset."""
    value = section.get(path.rsplit(".", 1)[-1])
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"EXPERIMENT.{path} must be a string, got {value!r}")
    return value


def _tags(section: Mapping[str, Any], path: str) -> tuple[str, ...]:
    value = section.get(path.rsplit(".", 1)[-1])
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigError(f"EXPERIMENT.{path} must be a list of strings, got {value!r}")
    if not all(isinstance(tag, str) for tag in value):
        raise ConfigError(f"EXPERIMENT.{path} must be a list of strings, got {value!r}")
    return tuple(value)


def _project(wandb: Mapping[str, Any], experiment: Mapping[str, Any]) -> str:
    project = _text(wandb, "WANDB.PROJECT") or _text(experiment, "PROJECT") or DEFAULT_PROJECT
    bad = sorted(_PROJECT_FORBIDDEN.intersection(project))
    if bad or len(project) > 128:
        raise ConfigError(
            f"EXPERIMENT.WANDB.PROJECT {project!r} is not a valid wandb project name "
            f"(at most 128 characters, none of {''.join(sorted(_PROJECT_FORBIDDEN))!r})"
        )
    return project


def _run_id(wandb: Mapping[str, Any]) -> str | None:
    run_id = _text(wandb, "WANDB.RUN_ID")
    if run_id is not None and (_RUN_ID_FORBIDDEN.intersection(run_id) or len(run_id) > 128):
        raise ConfigError(
            f"EXPERIMENT.WANDB.RUN_ID {run_id!r} is not a valid wandb run id "
            f"(at most 128 characters, none of {''.join(sorted(_RUN_ID_FORBIDDEN))!r})"
        )
    return run_id


def _resume(wandb: Mapping[str, Any]) -> str | None:
    value = wandb.get("RESUME")
    if value is None or value is True:
        return "allow"
    if value is False:
        return None
    if isinstance(value, str) and value.lower() in _RESUME:
        return _RESUME[value.lower()]
    raise ConfigError(
        "EXPERIMENT.WANDB.RESUME must be true, false, 'allow', 'auto', 'must' or 'never', "
        f"got {value!r}"
    )


def config_warnings(config: Any) -> tuple[str, ...]:
    """What a posted config asks for that the service ignores (an API key); never the key itself.

    >>> config_warnings({"EXPERIMENT": {"WANDB": {"KEY": "secret"}}})
    ('EXPERIMENT.WANDB.KEY is ignored: the service uses its own WANDB_API_KEY',)
    >>> config_warnings(None)
    ()
    """
    experiment = config.get("EXPERIMENT") if isinstance(config, Mapping) else None
    wandb = experiment.get("WANDB") if isinstance(experiment, Mapping) else None
    return _key_warning(wandb) if isinstance(wandb, Mapping) else ()


def _key_warning(wandb: Mapping[str, Any]) -> tuple[str, ...]:
    if wandb.get("KEY") in (None, ""):
        return ()
    return ("EXPERIMENT.WANDB.KEY is ignored: the service uses its own WANDB_API_KEY",)
