"""Every setting as a ``serve`` flag, and settings resolved flag > environment > file > default.

Needs the service extra (pydantic-settings): ``serve`` imports it only when it is installed.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from service.cli.config import load_yaml_mapping
from service.cli.errors import CliError
from service.settings import ENV_PREFIX, Settings

#: flags whose name is not the field's (repeatable, so singular)
FLAG_NAMES = {"auth_tokens": "--auth-token"}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of ``Settings`` (defaults left to ``load_settings``)."""
    for name, field in Settings.model_fields.items():
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        env = f"{ENV_PREFIX}{name.upper()}"
        default = field.get_default(call_default_factory=True)
        help_ = f"{field.description} (env {env}; default {default})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif name == "auth_tokens":
            parser.add_argument(flag, dest=name, action="append", metavar="TOKEN", help=help_ + ", repeatable")
        else:
            metavar = "SECONDS" if name.endswith("_s") else "N" if field.annotation is int else name.upper()
            parser.add_argument(flag, dest=name, metavar=metavar, help=help_)


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags over environment over the settings file (``--config``) over defaults.

    Raises:
        CliError: a setting is invalid (named with the reason), or the file is unreadable.
    """
    values = _file_values(getattr(args, "config", None))
    values.update(EnvSettingsSource(Settings)())
    values.update({k: v for k in Settings.model_fields if (v := getattr(args, k, None)) is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid setting {errors}") from exc


def _file_values(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    return {str(k).lower().replace("-", "_"): v for k, v in load_yaml_mapping(path).items()}
