"""resolve_wandb_options: the EXPERIMENT section (lives here with its only consumer's tests)."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

import service.core.experiment as experiment
from service.core.errors import ConfigError
from service.core.experiment import derive_wandb_run_id, resolve_wandb_options, without_secrets


def options(**sections: Any) -> experiment.WandbOptions:
    return resolve_wandb_options({"EXPERIMENT": sections}, "run-7")


def test_doctests() -> None:
    assert doctest.testmod(experiment).failed == 0


def test_defaults_without_any_config() -> None:
    opts = resolve_wandb_options(None, "run-7")
    assert opts == experiment.WandbOptions(
        enabled=True,
        project="linnaeus-metrics",
        entity=None,
        name="run-7",
        group=None,
        tags=(),
        notes=None,
        run_id="run-7",
        resume="allow",
        warnings=(),
    )


def test_wandb_section_wins_over_the_linnaeus_fallbacks() -> None:
    opts = options(
        PROJECT="p-exp",
        NAME="swin",
        GROUP="g",
        TAGS=["x"],
        NOTES="n-exp",
        WANDB={
            "PROJECT": "p-wandb",
            "ENTITY": "lab",
            "TAGS": ["y", "z"],
            "NOTES": "n-wandb",
            "RUN_ID": "abc123",
        },
    )
    assert (opts.project, opts.entity, opts.tags, opts.notes) == (
        "p-wandb",
        "lab",
        ("y", "z"),
        "n-wandb",
    )
    assert (opts.name, opts.group, opts.run_id) == ("swin", "g", "abc123")


def test_linnaeus_layout_with_its_empty_defaults() -> None:
    opts = options(
        NAME="",
        PROJECT="birds",
        GROUP="",
        TAGS=["t"],
        NOTES="",
        WANDB={"ENABLED": True, "RESUME": False, "KEY": "", "RUN_ID": ""},
    )
    assert (opts.project, opts.name, opts.group, opts.tags, opts.notes) == (
        "birds",
        "run-7",
        None,
        ("t",),
        None,
    )
    assert (opts.run_id, opts.resume, opts.warnings) == ("run-7", None, ())


@pytest.mark.parametrize(
    ("resume", "expected"),
    [
        (True, "allow"),
        ("allow", "allow"),
        ("AUTO", "allow"),
        ("must", "must"),
        ("never", "never"),
        (False, None),
        (None, "allow"),
    ],
)
def test_resume_mapping(resume: Any, expected: str | None) -> None:
    assert options(WANDB={"RESUME": resume}).resume == expected


def test_enabled_and_key() -> None:
    assert options(WANDB={"ENABLED": False}).enabled is False
    opts = options(WANDB={"KEY": "secret-value"})
    assert opts.warnings == (
        "EXPERIMENT.WANDB.KEY is ignored: the service uses its own WANDB_API_KEY",
    )
    assert "secret-value" not in repr(opts)


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        (
            {"WANDB": {"ENABLED": "yes"}},
            "EXPERIMENT.WANDB.ENABLED must be true or false, got 'yes'",
        ),
        ({"WANDB": {"RESUME": "sometimes"}}, "EXPERIMENT.WANDB.RESUME must be"),
        ({"WANDB": {"PROJECT": 7}}, "EXPERIMENT.WANDB.PROJECT must be a string, got 7"),
        ({"WANDB": {"TAGS": "a,b"}}, "EXPERIMENT.WANDB.TAGS must be a list of strings, got 'a,b'"),
        ({"TAGS": [1]}, "EXPERIMENT.TAGS must be a list of strings, got [1]"),
        ({"NAME": ["x"]}, "EXPERIMENT.NAME must be a string, got ['x']"),
        ({"WANDB": ["ENABLED"]}, "EXPERIMENT.WANDB must be a mapping, got list ['ENABLED']"),
        ({"WANDB": {"RUN_ID": "a/b"}}, "EXPERIMENT.WANDB.RUN_ID 'a/b' is not a valid"),
        ({"PROJECT": "a:b"}, "EXPERIMENT.WANDB.PROJECT 'a:b' is not a valid"),
    ],
)
def test_wrong_types_name_the_key_and_value(sections: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        options(**sections)
    assert named in str(info.value)


def test_unknown_wandb_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown keys \['NAME', 'PROJCT'\]"):
        options(WANDB={"PROJCT": "p", "NAME": "n"})


def test_experiment_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="EXPERIMENT must be a mapping, got str 'x'"):
        resolve_wandb_options({"EXPERIMENT": "x"}, "r")


def test_derived_ids_are_stable_and_acceptable_to_wandb() -> None:
    assert derive_wandb_run_id("exp.42_a-b") == "exp.42_a-b"
    long_id = "x" * 128
    assert derive_wandb_run_id(long_id) == derive_wandb_run_id(long_id)
    assert derive_wandb_run_id(long_id) != derive_wandb_run_id("x" * 127)
    assert derive_wandb_run_id("a/b:c").startswith("a-b-c-")
    assert derive_wandb_run_id("///").startswith("run-")


def test_without_secrets_strips_only_the_key() -> None:
    config: dict[str, Any] = {
        "METRICS": {"STEP_INTERVAL": 1},
        "EXPERIMENT": {"NAME": "n", "WANDB": {"KEY": "s", "ENABLED": True}},
    }
    assert without_secrets(config) == {
        "METRICS": {"STEP_INTERVAL": 1},
        "EXPERIMENT": {"NAME": "n", "WANDB": {"ENABLED": True}},
    }
    assert config["EXPERIMENT"]["WANDB"]["KEY"] == "s"  # the original is untouched
    assert without_secrets(None) == {}
