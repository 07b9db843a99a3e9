"""The deployment files agree with each other and with the code, and the image's command works.

No Docker engine is needed: the files are parsed (Dockerfile by a small instruction parser,
compose and Prometheus config with PyYAML, pyproject with tomllib) and checked against the
console script, the Settings model and the routes; then the image's exact ENTRYPOINT + CMD,
with the image's ENV, is run from this venv and probed with the image's own HEALTHCHECK.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "docker" / "prometheus.yml"
ENV_PREFIX = "LINNAEUS_METRICS_"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# -- parsing helpers ---------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # comments, directives and blank lines may sit inside a continuation, too
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, args = (buf + line).strip().partition(" ")
        buf = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the stage the image is made of."""
    return dockerfile_stages()[-1]


def instruction(name: str) -> str:
    """The arguments of the last ``name`` instruction of the final stage (Docker's rule)."""
    found = [args for keyword, args in final_stage() if keyword == name]
    assert found, f"Dockerfile: the final stage has no {name}"
    return found[-1]


def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV (``KEY=VALUE`` form) in order."""
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))  # type: ignore[misc]
    return env


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and its exec-form command."""
    options, cmd = re.split(r"\bCMD\b", instruction("HEALTHCHECK"), maxsplit=1)
    parsed = dict(token.removeprefix("--").split("=", 1) for token in options.split())
    command = json.loads(cmd)
    assert isinstance(command, list), "HEALTHCHECK CMD must be the exec form (a JSON array)"
    return parsed, command


def seconds(duration: str) -> float:
    """A Docker/compose duration (``40s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def compose() -> dict[str, Any]:
    """docker-compose.yml as data."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    """One compose service."""
    return dict(compose()["services"][name])


def port_mapping(spec: str) -> tuple[str, int, int]:
    """``"ip:host:container"`` → (ip, host port, container port)."""
    ip, host, container = spec.rsplit(":", 2)
    return ip, int(host), int(container)


def pyproject() -> dict[str, Any]:
    """pyproject.toml as data."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def console_script() -> tuple[str, str]:
    """The one console script: (name, ``module:function``)."""
    scripts = pyproject()["project"]["scripts"]
    assert len(scripts) == 1, f"expected one console script, got {scripts}"
    name, target = next(iter(scripts.items()))
    return str(name), str(target)


# -- .dockerignore (moby's rules: last matching pattern wins, a pattern matching a parent dir
# matches everything below it, ``**`` spans directories) -----------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per pattern of the root .dockerignore."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        patterns.append((negated, re.compile(_glob_regex(glob))))
    return patterns


GLOB_TOKENS = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def _glob_regex(glob: str) -> str:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
        out += GLOB_TOKENS.get(token, re.escape(token))
    return out


def in_context(path: str) -> bool:
    """Whether ``path`` (relative, posix) reaches the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in dockerignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return not excluded


def repo_files() -> list[str]:
    """Files of the work tree (without .git and .venv), relative and posix."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        rel = Path(dirpath).relative_to(ROOT)
        files.extend((rel / f).as_posix() for f in filenames)
    return files


# -- compose -----------------------------------------------------------------------------------

def test_compose_builds_the_dockerfile_into_the_documented_image() -> None:
    metrics = service("metrics")
    assert metrics["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    build = metrics["build"]
    assert COMPOSE.parent / build["context"] / build["dockerfile"] == DOCKERFILE
    assert metrics["image"] == "linnaeus-metrics:latest"
    assert metrics["restart"] == "unless-stopped"


def test_compose_keeps_state_in_the_named_volume_the_image_declares() -> None:
    assert "metrics-data" in compose()["volumes"]
    assert service("metrics")["volumes"] == ["metrics-data:/data"]
    assert instruction("VOLUME") == "/data"
    assert dockerfile_env()["LINNAEUS_METRICS_DATA_DIR"] == "/data"
    assert dockerfile_env()["WANDB_DIR"].startswith("/data/"), "wandb files must persist"


def test_port_is_the_same_in_compose_expose_and_settings_env() -> None:
    (mapping,) = service("metrics")["ports"]
    ip, host_port, container_port = port_mapping(mapping)
    assert ip == "127.0.0.1", "published on loopback only by default"
    assert host_port == container_port == int(instruction("EXPOSE")) == 8000
    assert int(dockerfile_env()["LINNAEUS_METRICS_PORT"]) == container_port
    assert dockerfile_env()["LINNAEUS_METRICS_HOST"] == "0.0.0.0", "reachable through the port"


def test_compose_healthcheck_mirrors_the_dockerfile() -> None:
    options, command = healthcheck()
    check = service("metrics")["healthcheck"]
    assert check["test"] == ["CMD", *command]
    for name in ("interval", "timeout", "start_period"):
        assert seconds(check[name]) == seconds(options[name.replace("_", "-")]), name
    assert check["retries"] == int(options["retries"])
    assert seconds(options["timeout"]) < seconds(options["interval"])


def test_stop_grace_covers_the_service_shutdown_deadline() -> None:
    metrics = service("metrics")
    deadline = Settings.model_fields["shutdown_timeout_s"].default
    assert metrics["stop_signal"] == instruction("STOPSIGNAL") == "SIGTERM"
    assert seconds(metrics["stop_grace_period"]) == 40
    assert seconds(metrics["stop_grace_period"]) > deadline


def test_compose_environment_is_real_settings_and_its_empty_defaults_are_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = service("metrics")["environment"]
    assert environment == {"WANDB_API_KEY": "${WANDB_API_KEY:-}",
                           "LINNAEUS_METRICS_AUTH_TOKENS": "${LINNAEUS_METRICS_AUTH_TOKENS:-}"}
    for name in environment:
        if name.startswith(ENV_PREFIX):
            assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, name
    monkeypatch.setenv("LINNAEUS_METRICS_AUTH_TOKENS", "")  # what the empty default gives
    assert Settings().auth_tokens == []


def test_prometheus_is_an_optional_loopback_service_with_the_mounted_config() -> None:
    prometheus = service("prometheus")
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["image"].startswith("prom/prometheus:v"), "pin a Prometheus version"
    assert [port_mapping(p) for p in prometheus["ports"]] == [("127.0.0.1", 9090, 9090)]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prometheus["volumes"]}
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert (COMPOSE.parent / mounts[config_flag.split("=", 1)[1]]).resolve() == PROMETHEUS
    assert prometheus["depends_on"] == {"metrics": {"condition": "service_healthy"}}
    assert "prometheus-data" in compose()["volumes"]


def test_prometheus_scrapes_the_metrics_service() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    container_port = port_mapping(service("metrics")["ports"][0])[2]
    assert static["targets"] == [f"metrics:{container_port}"]
    assert job["metrics_path"] == "/metrics"
    assert "credentials_file" in PROMETHEUS.read_text(), "document the token for auth tokens"


# -- Dockerfile --------------------------------------------------------------------------------

def test_entrypoint_and_command_run_the_console_script_pyproject_defines() -> None:
    name, target = console_script()
    assert json.loads(instruction("ENTRYPOINT")) == [name]
    assert json.loads(instruction("CMD")) == ["serve"]
    assert service("metrics").get("command", ["serve"]) == ["serve"]
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_dockerfile_env_names_are_settings_fields_and_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    assert {f"{ENV_PREFIX}{name}" for name in ("DATA_DIR", "HOST", "PORT")} <= set(env)
    for name, value in env.items():
        assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, name
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 8000, Path("/data"))


def test_dockerfile_is_multi_stage_on_the_pinned_slim_python_pyproject_supports() -> None:
    bases = [stage[0][1].split()[0] for stage in dockerfile_stages()]
    assert len(bases) >= 2, "build the wheel in one stage, install it in another"
    assert all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base) for base in bases), bases
    assert "3.11" in SpecifierSet(pyproject()["project"]["requires-python"])


def test_final_stage_runs_as_a_fixed_non_root_user_it_creates() -> None:
    user = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER must be a fixed non-root uid, got {user!r}"
    runs = " ".join(args for keyword, args in final_stage() if keyword == "RUN")
    assert f"--uid {uid}" in runs and f"chown -R {user} /data" in runs
    keywords = [keyword for keyword, _ in final_stage()]
    last_run = len(keywords) - 1 - keywords[::-1].index("RUN")
    assert keywords.index("USER") > last_run, "nothing may run as root after USER"


def test_final_stage_is_slim() -> None:
    runs = [args for keyword, args in final_stage() if keyword == "RUN"]
    for forbidden in ("apt-get", "gcc", "build-essential"):
        assert not any(forbidden in run for run in runs), forbidden
    copies = [keyword for keyword, _ in final_stage() if keyword in ("COPY", "ADD")]
    assert not copies, "the wheels come by bind mount, not as a layer"
    installs = [run for stage in dockerfile_stages() for keyword, run in stage
                if keyword == "RUN" and re.search(r"pip (install|wheel)", run)]
    assert installs and all("--no-cache-dir" in run for run in installs)


def test_healthcheck_probes_healthz_on_loopback_with_python() -> None:
    options, command = healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "'http://127.0.0.1:%s/healthz'" in command[2]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


# -- .dockerignore -----------------------------------------------------------------------------

def test_build_context_holds_what_the_wheel_needs_and_nothing_local() -> None:
    copies = [args.split()[:-1] for keyword, args in dockerfile_stages()[0] if keyword == "COPY"]
    sources = {src.rstrip("/") for srcs in copies for src in srcs if not src.startswith("--")}
    find = pyproject()["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    assert packages | {"pyproject.toml", pyproject()["project"]["readme"]} <= sources
    for path in repo_files():
        compiled = "__pycache__" in path or path.endswith(".pyc")
        assert in_context(path) == (path.split("/")[0] in sources and not compiled), path
    for local in (".venv/bin/python", ".git/HEAD", ".env", "metrics-data/x.sqlite3", "wandb/x"):
        assert not in_context(local), local


# -- the image's command, run directly ---------------------------------------------------------

@dataclass
class Served:
    """The image command as a child process, with the stderr lines it printed so far."""

    proc: subprocess.Popen[str]
    env: dict[str, str]
    url: str
    lines: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        """Collect stderr until EOF; startup is when uvicorn says the lifespan completed."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Application startup complete" in line:
                self.started.set()
        self.ended.set()
        self.started.set()  # exited: wake the waiter, which then sees the exit

    def log(self) -> str:
        """The last lines of its log, for assertion messages."""
        return "".join(self.lines[-40:])


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def image_env(data_dir: Path, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The Dockerfile's ENV with /data → ``data_dir``, loopback, a free port and no wandb."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "WANDB_DIR"}
    for name, value in dockerfile_env().items():
        if name not in ("PATH", "VIRTUAL_ENV"):  # the image's paths: here this venv's script runs
            env[name] = re.sub(r"^/data(?=/|$)", str(data_dir), value)
    env.update({"LINNAEUS_METRICS_HOST": "127.0.0.1", "LINNAEUS_METRICS_PORT": str(port),
                "LINNAEUS_METRICS_WANDB_ENABLED": "false", **extra})
    return env


def image_command() -> list[str]:
    """ENTRYPOINT + CMD, the script taken from this venv."""
    entrypoint, cmd = json.loads(instruction("ENTRYPOINT")), json.loads(instruction("CMD"))
    script = Path(sys.executable).parent / entrypoint[0]
    assert script.exists(), f"{script} missing: `{sys.executable} -m pip install -e '.[service]'`"
    return [str(script), *entrypoint[1:], *cmd]


@pytest.fixture
def serve_image(tmp_path: Path) -> Iterator[Any]:
    """Start the image command with extra env; stops it (SIGKILL) if a test left it running."""
    started: list[Served] = []

    def start(**extra: str) -> Served:
        port = free_port()
        env = image_env(tmp_path / "data", port, extra)
        proc = subprocess.Popen(image_command(), env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        served = Served(proc, env, f"http://127.0.0.1:{port}")
        started.append(served)
        threading.Thread(target=served.read, daemon=True).start()
        assert served.started.wait(STARTUP_TIMEOUT_S), f"no startup within {STARTUP_TIMEOUT_S} s"
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{served.log()}"
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(STOP_TIMEOUT_S)
        assert served.proc.stderr is not None
        served.proc.stderr.close()


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command as Docker runs it (``python`` = the image's venv python)."""
    options, command = healthcheck()
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True,
                          timeout=seconds(options["timeout"]), check=False)


def get(url: str, token: str | None = None) -> httpx.Response:
    """GET without proxies from the environment."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, timeout=10, trust_env=False)


def stop_cleanly(served: Served) -> None:
    """SIGTERM (what ``docker stop`` sends): a complete graceful shutdown within the deadline.

    uvicorn re-raises the SIGTERM it caught once shutdown is complete, so the process ends
    "killed by SIGTERM" (143 in a container), the Unix convention; 0 would be as clean.
    """
    served.proc.send_signal(signal.SIGTERM)
    code = served.proc.wait(STOP_TIMEOUT_S)
    assert code in (0, -signal.SIGTERM), f"exit {code}:\n{served.log()}"
    assert served.ended.wait(STOP_TIMEOUT_S), "stderr still open"  # the log is complete
    log = "".join(served.lines)
    assert "Application shutdown complete" in log and "Traceback" not in log, served.log()


@pytest.mark.e2e
def test_image_command_serves_passes_its_healthcheck_and_stops_cleanly(serve_image: Any) -> None:
    served: Served = serve_image()
    healthy = run_healthcheck(served.env)
    assert healthy.returncode == 0, healthy.stderr
    assert get(f"{served.url}/readyz").status_code == 200
    metrics_path = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["metrics_path"]
    scrape = get(served.url + metrics_path)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert (Path(served.env["LINNAEUS_METRICS_DATA_DIR"]) / "metrics.sqlite3").exists()

    stop_cleanly(served)
    assert run_healthcheck(served.env).returncode != 0, "must fail when nothing serves"


@pytest.mark.e2e
def test_image_healthcheck_needs_no_token_while_the_scrape_does(serve_image: Any) -> None:
    token = "scrape-token-0123"
    served: Served = serve_image(LINNAEUS_METRICS_AUTH_TOKENS=f"other-token-4567,{token}")
    healthy = run_healthcheck(served.env)
    assert healthy.returncode == 0, healthy.stderr
    assert get(f"{served.url}/metrics").status_code == 401
    assert get(f"{served.url}/metrics", token).status_code == 200
    stop_cleanly(served)
