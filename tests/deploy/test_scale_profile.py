"""The compose ``scale`` profile: PostgreSQL, three replicas on it, and the nginx router.

No Docker engine here: the files are parsed and checked against each other, the Settings
model and the service's own rules (run id pattern, body limit).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from client._rules import RUN_ID_PATTERN
from service.settings import Settings
from tests.deploy.test_docker_files import (
    COMPOSE,
    DOCKERFILE,
    ENV_PREFIX,
    compose,
    dockerfile_stages,
    port_mapping,
    seconds,
    service,
)

NGINX = COMPOSE.parent / "docker" / "nginx.conf"
REPLICAS = ["replica-1", "replica-2", "replica-3"]
PASSWORD = "s3cret-pw"


def _expand(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` / ``${NAME:?error}`` / ``${NAME}`` substitution."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        assert op != ":?", f"compose refuses to start without {name}: {arg}"
        return arg
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value)


def _replica_settings(name: str, env: dict[str, str]) -> Settings:
    environment = {k: _expand(str(v), env) for k, v in service(name)["environment"].items()}
    fields = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in environment.items() if k.startswith(ENV_PREFIX)}
    assert set(fields) <= set(Settings.model_fields), fields
    return Settings(**fields)


def _nginx() -> str:
    return re.sub(r"#[^\n]*", "", NGINX.read_text())


def test_postgres_is_pinned_keeps_its_data_in_a_named_volume_and_reports_health() -> None:
    postgres = service("postgres")
    assert postgres["profiles"] == ["scale"]
    assert re.fullmatch(r"postgres:15\.\d+", postgres["image"]), "pin the PostgreSQL the tests run against"
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert "postgres-data" in compose()["volumes"]
    check = postgres["healthcheck"]
    assert check["test"][:2] == ["CMD", "pg_isready"]
    assert seconds(check["timeout"]) < seconds(check["interval"])
    env = postgres["environment"]
    assert env["POSTGRES_PASSWORD"].startswith("${LINNAEUS_METRICS_PG_PASSWORD:?"), "no default password"
    assert "ports" not in postgres, "only the replicas reach the database"


@pytest.mark.parametrize("name", REPLICAS)
def test_each_replica_is_the_image_on_the_shared_database_with_its_own_identity(name: str) -> None:
    replica = service(name)
    assert replica["profiles"] == ["scale"]
    assert replica["image"] == service("metrics")["image"] and replica["build"] == service("metrics")["build"]
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert replica["healthcheck"] == service("metrics")["healthcheck"]
    assert replica["volumes"] == [f"{name}-data:/data"] and f"{name}-data" in compose()["volumes"]
    assert "ports" not in replica, "clients go through the router"
    settings = _replica_settings(name, {"LINNAEUS_METRICS_PG_PASSWORD": PASSWORD})
    postgres = service("postgres")["environment"]
    user, db = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    assert settings.store == f"postgresql://{user}:{PASSWORD}@postgres:5432/{db}"
    assert settings.replica_id == name
    assert settings.advertised_url == f"http://127.0.0.1:8080/{name}"
    assert 1 <= settings.lease_ttl_s <= 10, "a few seconds: the failover time follows it"
    routed = _replica_settings(name, {"LINNAEUS_METRICS_ROUTER_URL": "https://metrics.example:443"})
    assert routed.advertised_url == f"https://metrics.example:443/{name}"


def test_the_router_publishes_loopback_only_and_mounts_the_config() -> None:
    router = service("router")
    assert router["profiles"] == ["scale"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+", router["image"]), "pin an nginx version"
    assert [port_mapping(p) for p in router["ports"]] == [("127.0.0.1", 8080, 8080)]
    assert {COMPOSE.parent / m.split(":")[0] for m in router["volumes"]} == {NGINX}
    assert router["volumes"][0].endswith(":/etc/nginx/nginx.conf:ro")
    assert router["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    listen = re.search(r"listen\s+(\d+);", _nginx())
    assert listen and int(listen.group(1)) == port_mapping(router["ports"][0])[2]


def test_the_router_hashes_consistently_on_the_run_id_over_exactly_the_replicas() -> None:
    text = _nginx()
    upstream = re.search(r"upstream replicas \{(.*?)\}", text, re.S)
    assert upstream
    assert re.search(r"hash \$run_key consistent;", upstream.group(1))
    servers = re.findall(r"server ([\w-]+):(\d+)", upstream.group(1))
    assert [s for s, _ in servers] == REPLICAS
    assert {int(p) for _, p in servers} == {Settings.model_fields["port"].default}
    assert re.search(r"location / \{\s*proxy_pass http://replicas;", text)


def _run_key_regex() -> re.Pattern[str]:
    found = re.search(r"map \$uri \$run_key \{\s*~(\S+) \$run;", _nginx())
    assert found, "the run id must be taken from the path"
    return re.compile(found.group(1).replace("(?<", "(?P<"))


@pytest.mark.parametrize(("path", "run"), [
    ("/v1/runs/exp-42.a_b/events", "exp-42.a_b"), ("/v1/runs/r", "r"), ("/v1/runs/r/checkpoints/10", "r"),
    ("/v1/runs/" + "x" * 128 + "/metrics", "x" * 128), ("/v1/runs", None), ("/readyz", None),
])
def test_the_run_key_is_the_run_id_of_the_path(path: str, run: str | None) -> None:
    match = _run_key_regex().match(path)
    assert (match.group("run") if match else None) == run
    if run is not None:
        assert RUN_ID_PATTERN.match(run)


def test_each_replica_is_reachable_under_its_advertised_path() -> None:
    text = _nginx()
    for name in REPLICAS:
        prefix = Path(str(_replica_settings(name, {"LINNAEUS_METRICS_PG_PASSWORD": PASSWORD}).advertised_url)).name
        assert re.search(rf"location /{prefix}/ \{{\s*proxy_pass http://{name}:8000/;", text), name


def test_the_router_lets_a_full_body_through_and_resends_only_what_is_safe() -> None:
    text = _nginx()
    size = re.search(r"client_max_body_size (\d+)m;", text)
    assert size and int(size.group(1)) * 1024 * 1024 > Settings.model_fields["max_body_bytes"].default
    timeout = re.search(r"proxy_read_timeout (\d+)s;", text)
    assert timeout and int(timeout.group(1)) > Settings.model_fields["checkpoint_wait_max_s"].default
    assert re.search(r"proxy_next_upstream error timeout non_idempotent;", text)


def test_the_image_carries_the_postgres_store() -> None:
    installs: list[Any] = [args for stage in dockerfile_stages() for keyword, args in stage
                           if keyword == "RUN" and re.search(r"pip (install|wheel)", args)]
    assert installs and all("postgres]" in run for run in installs), DOCKERFILE
