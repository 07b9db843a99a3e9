"""Issue 14, item 9: with the base install alone (numpy, httpx, msgpack and the package, no
service extra) the query commands work and ``serve`` says which extra to install.

The base install is a fresh venv whose site-packages holds exactly the base distributions,
taken from this environment (so the test needs no network).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from tests.conftest import make_run
from tests.e2e.conftest import LiveServer, live_server, post_one_rank_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e
BASE = ("linnaeus-metrics", "numpy", "httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi", "msgpack",
        "typing_extensions", "exceptiongroup")


def _base_venv(root: Path) -> Path:
    """A venv with only the base install's distributions linked into its site-packages."""
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in BASE:
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # optional backports (exceptiongroup) on newer Pythons
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


@pytest.fixture(scope="module")
def base_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = _base_venv(tmp_path_factory.mktemp("base-venv"))
    missing = subprocess.run([str(python), "-c", "import pydantic"], capture_output=True, text=True, check=False)
    assert missing.returncode != 0, "the base venv must not have pydantic"
    return python


def _cli(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "service.cli", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": "/usr/bin:/bin"})


def test_help_version_and_serve_without_the_service_extra(base_python: Path) -> None:
    helped = _cli(base_python, "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "snapshot" in helped.stdout, helped.stderr
    version = _cli(base_python, "--version")
    expected = f"linnaeus-metrics {distribution('linnaeus-metrics').version}"
    assert version.returncode == 0 and version.stdout.strip() == expected
    for args in (["serve"], ["serve", "--port", "1"], ["serve", "--help"]):
        serve = _cli(base_python, *args)
        assert serve.returncode == 2, args
        assert serve.stderr.strip().splitlines() == [
            "linnaeus-metrics: error: serve needs the service extra (pydantic is not installed): "
            "pip install 'linnaeus-metrics[service]'"], args


def test_validate_config_of_a_json_file_without_the_service_extra(base_python: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"METRICS": {"STEP_INTERVAL": 10, "WANDB_FRACTION": 0.1}}))
    done = _cli(base_python, "validate-config", str(good), "--total-steps", "1000", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schedule"]["wandb"] == 100
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"METRICS": {"STEP_INTERVALL": 5, "LR_INTERVAL": 2, "LR_FRACTION": 0.5,
                                           "WANDB_INTERVAL": -1}}))
    refused = _cli(base_python, "validate-config", str(bad))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    for needle in ("4 error(s)", "STEP_INTERVALL", "LR_FRACTION", "WANDB_INTERVAL", "--total-steps"):  # all at once
        assert needle in refused.stderr, refused.stderr


def test_queries_without_the_service_extra(base_python: Path, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    data = make_run(7, world_size=1, steps_per_epoch=4, epochs=1)
    url = live_server.url
    post_one_rank_run(url, "base", data, {"STEP_INTERVAL": 2})
    runs = _cli(base_python, "runs", "--url", url)
    assert runs.returncode == 0 and "base" in runs.stdout, runs.stderr
    show = _cli(base_python, "show", "base", "--url", url, "--keys", "train/loss")
    assert show.returncode == 0 and "train/loss" in show.stdout, show.stderr
    to_stdout = _cli(base_python, "snapshot", "base", "--url", url, "-o", "-")
    assert to_stdout.returncode == 0 and json.loads(to_stdout.stdout)["run_id"] == "base"
    assert not Path("-").exists()
    missing_dir = _cli(base_python, "snapshot", "base", "--url", url, "-o", str(tmp_path / "missing" / "x.json"))
    assert missing_dir.returncode == 2 and missing_dir.stderr.count("\n") == 1, missing_dir.stderr
    assert "cannot write the snapshot" in missing_dir.stderr and "Traceback" not in missing_dir.stderr
    into_dir = _cli(base_python, "snapshot", "base", "--url", url, "-o", str(tmp_path))
    assert into_dir.returncode == 2 and "cannot write the snapshot" in into_dir.stderr


def test_url_and_token_have_help() -> None:
    done = subprocess.run([sys.executable, "-m", "service.cli", "runs", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "LINNAEUS_METRICS_URL" in done.stdout and "LINNAEUS_METRICS_TOKEN" in done.stdout
