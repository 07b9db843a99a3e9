"""``linnaeus-metrics validate-config FILE``: the resolved schedule and wandb options, or the errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli.errors import CliError
from service.core.errors import ConfigError
from service.core.experiment import resolve_wandb_options
from service.core.schedule import GROUPS, KNOWN_KEYS, metrics_section, resolve_schedule


def add_commands(commands: Any) -> None:
    """Register ``validate-config``."""
    cmd = commands.add_parser("validate-config", help="check a training config's METRICS and EXPERIMENT sections")
    cmd.add_argument("file", help="linnaeus training config (YAML or JSON)")
    cmd.add_argument("--total-steps", type=int, default=None,
                     help="total optimizer steps (needed to resolve *_FRACTION keys)")
    cmd.add_argument("--run-id", default="run", help="run id used for the default wandb name/id")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd.set_defaults(func=_validate)


def load_yaml_mapping(path: str) -> dict[str, Any]:
    """Read a YAML (or JSON) file whose top level is a mapping (a training config, a settings file).

    Without PyYAML (the base install) JSON files still work.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    loaded = _parse(text, path)
    if not isinstance(loaded, dict):
        raise CliError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _parse(text: str, path: str) -> Any:
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CliError(f"cannot read {path}: not JSON, and reading YAML needs PyYAML "
                           "(pip install pyyaml, or the service extra)") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc


def config_errors(config: dict[str, Any], total_steps: int | None, run_id: str) -> list[str]:
    """Every error of the config's METRICS and EXPERIMENT sections, not only the first."""
    try:
        section = metrics_section(config)
    except ConfigError as exc:
        return [str(exc)]
    # each group alone, and the unknown keys alone, so that one error does not hide the others
    parts = [{k: v for k, v in section.items() if k not in KNOWN_KEYS}]
    parts += [{k: v for k, v in section.items() if k in KNOWN_KEYS and k.startswith(f"{g.upper()}_")}
              for g in GROUPS]
    errors = [err for part in parts if part and (err := _error(resolve_schedule, {"METRICS": part}, 1))]
    if total_steps is None and any(k.endswith("_FRACTION") and v for k, v in section.items()):
        errors.append("the METRICS section uses *_FRACTION keys: pass --total-steps N to resolve them")
    wandb_error = _error(resolve_wandb_options, config, run_id)
    return errors + ([wandb_error] if wandb_error else [])


def _error(check: Any, *args: Any) -> str | None:
    try:
        check(*args)
    except ConfigError as exc:
        return str(exc)
    return None


def _validate(args: argparse.Namespace) -> int:
    config = load_yaml_mapping(args.file)
    errors = config_errors(config, args.total_steps, args.run_id)
    if errors:
        raise CliError(f"{args.file}: {len(errors)} error(s): " + "; ".join(errors))
    schedule = resolve_schedule(config, args.total_steps or 1)
    wandb = resolve_wandb_options(config, args.run_id)
    report = {"schedule": {g: schedule.intervals[g] for g in GROUPS},
              "wandb": {"enabled": wandb.enabled, "project": wandb.project, "entity": wandb.entity,
                        "name": wandb.name, "run_id": wandb.run_id, "resume": wandb.resume, "tags": list(wandb.tags)},
              "warnings": list(wandb.warnings)}
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _table(report: dict[str, Any]) -> str:
    lines = ["group      interval (steps)"]
    for group, interval in report["schedule"].items():
        lines.append(f"{group:<10} {interval if interval else 'disabled'}")
    lines.append("")
    lines.extend(f"wandb.{k:<8} {v}" for k, v in report["wandb"].items())
    lines.extend(f"warning: {w}" for w in report["warnings"])
    return "\n".join(lines)
