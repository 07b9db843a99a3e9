"""The command line: validate-config, serve's failure modes, queries against a live server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import make_run
from tests.e2e.conftest import LiveServer, live_server, post_one_rank_run  # noqa: F401  (fixture)

CONFIG = """
SCHEDULE:
  METRICS:
    STEP_INTERVAL: 50
    WANDB_FRACTION: 0.01
EXPERIMENT:
  PROJECT: taxa
  WANDB:
    KEY: not-a-real-key
"""


def test_validate_config_prints_resolved_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(CONFIG)
    assert main(["validate-config", str(path), "--total-steps", "20000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == {"step": 50, "console": 0, "wandb": 200, "lr": 0, "pipeline": 0}
    assert report["wandb"]["project"] == "taxa"
    assert "not-a-real-key" not in json.dumps(report) and "KEY" in report["warnings"][0]


@pytest.mark.parametrize(("text", "needle"), [
    ("METRICS: {STEP_INTERVAL: 5, STEP_FRACTION: 0.1}", "STEP_FRACTION"),
    ("METRICS: {STEP_INTERVALL: 5}", "STEP_INTERVALL"),
    ("METRICS: {WANDB_FRACTION: 0.1}", "--total-steps"),
    ("- not a mapping", "mapping"),
])
def test_validate_config_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={"LINNAEUS_METRICS_WANDB_ENABLED": "false", "PATH": "/usr/bin:/bin"})


def test_serve_fails_with_one_line_on_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = _serve("--port", str(busy.getsockname()[1]), "--data-dir", str(tmp_path / "d"), "--log-level", "critical")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("linnaeus-metrics: error: cannot listen on")


def test_serve_fails_on_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = _serve("--data-dir", str(blocker / "sub"))
    assert done.returncode == 2 and "data dir" in done.stderr and done.stderr.count("\n") == 1


def test_serve_fails_on_bad_flag(tmp_path: Path) -> None:
    done = _serve("--port", "99999", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "port" in done.stderr


def test_queries_against_a_live_server(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    data = make_run(2, world_size=1, steps_per_epoch=4, epochs=1)
    url = live_server.url
    post_one_rank_run(url, "cli-run", data, {"STEP_INTERVAL": 2})
    assert main(["runs", "--url", url]) == 0
    assert "cli-run" in capsys.readouterr().out
    assert main(["show", "cli-run", "--url", url, "--keys", "train/loss,train/epoch_"]) == 0
    out = capsys.readouterr().out
    latest = httpx.get(f"{url}/v1/runs/cli-run/metrics").json()["metrics"]
    assert f"{latest['train/loss']['value']:.6g}" in out and "train/epoch_loss" in out and "train/acc1" not in out
    target = tmp_path / "snap.json"
    assert main(["snapshot", "cli-run", "--url", url, "-o", str(target)]) == 0
    assert json.loads(target.read_text())["run_id"] == "cli-run"
    assert main(["show", "nope", "--url", url]) == 2
    assert "404" in capsys.readouterr().err


def test_settings_precedence_flag_over_env_over_file_over_default(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import build_parser
    from service.cli.serve_flags import load_settings
    from service.settings import Settings

    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("port: 9001\nmax_runs: 7\nhistory_max_points: 500\nwandb_enabled: true\n")
    monkeypatch.setenv("LINNAEUS_METRICS_PORT", "9200")
    monkeypatch.setenv("LINNAEUS_METRICS_MAX_RUNS", "9")
    monkeypatch.setenv("LINNAEUS_METRICS_WANDB_ENABLED", "true")
    args = build_parser().parse_args(["serve", "--config", str(settings_file), "--port", "9100", "--no-wandb-enabled"])
    settings = load_settings(args)
    assert (settings.port, settings.max_runs, settings.history_max_points) == (9100, 9, 500)
    assert settings.wandb_enabled is False
    assert settings.max_body_bytes == Settings.model_fields["max_body_bytes"].default
    settings_file.write_text("no_such_setting: 1\n")
    with pytest.raises(Exception, match="no_such_setting"):
        load_settings(args)


def test_every_setting_has_a_flag_and_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import build_parser
    from service.cli.serve_flags import FLAG_NAMES, load_settings
    from service.settings import Settings

    help_text = _serve("--help").stdout
    for name, field in Settings.model_fields.items():
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        assert flag in help_text and f"LINNAEUS_METRICS_{name.upper()}" in help_text, name
        # the flag and the variable each reach the setting
        value = _other_value(name, field.get_default(call_default_factory=True))
        text = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(
            value)
        flag_args = [f"--{'' if value else 'no-'}{name.replace('_', '-')}"] if field.annotation is bool else [
            flag, text]
        assert getattr(load_settings(build_parser().parse_args(["serve", *flag_args])), name) == value, name
        monkeypatch.setenv(f"LINNAEUS_METRICS_{name.upper()}", text)
        assert getattr(load_settings(build_parser().parse_args(["serve"])), name) == value, name
        monkeypatch.delenv(f"LINNAEUS_METRICS_{name.upper()}")


def _other_value(name: str, default: object) -> object:
    """A valid value different from the default."""
    special: dict[str, object] = {"host": "127.0.0.2", "data_dir": Path("/tmp/elsewhere"), "auth_tokens": [
        "token-0123456789"], "sqlite_synchronous": "NORMAL", "wandb_mode": "offline", "log_level": "debug",
        "store": "postgresql://metrics@127.0.0.1:5432/metrics", "replica_id": "replica-9",
        "advertised_url": "http://10.0.0.9:8000"}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return type(default)(default * 2 + 1)
    raise AssertionError(f"no test value for {name}")


def test_export_run_metrics_from_the_flag_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from service.cli.serve import add_commands
    from service.cli.serve_flags import load_settings

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))

    def settings(*flags: str) -> bool:
        return load_settings(parser.parse_args(["serve", "--data-dir", str(tmp_path), *flags])).export_run_metrics

    monkeypatch.delenv("LINNAEUS_METRICS_EXPORT_RUN_METRICS", raising=False)
    assert (settings(), settings("--export-run-metrics")) == (False, True)
    monkeypatch.setenv("LINNAEUS_METRICS_EXPORT_RUN_METRICS", "true")
    assert settings() is True
