"""Copies of an object holding a client (issue 14, finding 6): EMA/SWA deepcopies,
``torch.save(model)``, ``ddp_spawn`` pickles. A copy never fences the original; an
unpickled client in another process opens its own session when it first logs.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import MetricsClient
from tests.e2e.conftest import quiet_service

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-never-pickled-1234"


class Holder:
    """What a LightningModule or an nn.Module holding a client looks like to copy/pickle."""

    def __init__(self, mc: MetricsClient) -> None:
        self.mc = mc
        self.weights = [0.5, 1.5]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with quiet_service(tmp_path_factory, "copies") as served:
        yield served


def make(url: str, run_id: str) -> MetricsClient:
    return MetricsClient(url, run_id, rank=0, world_size=1, tasks={"genus": 5}, total_steps=100, token=TOKEN,
                         flush_interval_s=0.01)


def session_of_rank0(url: str, run_id: str) -> Any:
    return httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()["ranks"][0]["session"]


def test_a_deepcopy_shares_the_client_and_never_fences_it(url: str) -> None:
    holder = Holder(make(url, "deepcopy"))
    holder.mc.log_lr(1, {"g": 0.1})
    assert holder.mc.flush(10)
    session = session_of_rank0(url, "deepcopy")
    twin = copy.deepcopy(holder)  # what EMA/SWA callbacks do to the model
    assert twin.mc is holder.mc and twin.weights is not holder.weights
    assert copy.copy(holder.mc) is holder.mc
    twin.mc.log_lr(2, {"g": 0.2})
    holder.mc.log_lr(3, {"g": 0.3})
    assert holder.mc.flush(10)
    assert session_of_rank0(url, "deepcopy") == session, "no new session: nothing was fenced"
    holder.mc.close()


def test_torch_save_of_a_model_holding_the_client_loads_back_the_same_client(url: str) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    model.mc = make(url, "torch-save")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert TOKEN.encode() not in buffer.getvalue(), "a token is never written into a checkpoint"
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.mc is model.mc  # same process, client still open: the original
    model.mc.log_lr(1, {"g": 0.1})
    checkpoint = model.mc.state_dict(timeout_s=20)
    model.mc.close()
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert reloaded.mc is not model.mc and reloaded.mc.run_id == "torch-save"  # a new client of the run
    reloaded.mc.load_state_dict(checkpoint, timeout_s=20)  # opens its session on first use
    reloaded.mc.log_lr(2, {"g": 0.2})
    assert reloaded.mc.flush(10)
    reloaded.mc.close()


CHILD = """
import json, pickle, sys
import httpx
holder = pickle.loads(sys.stdin.buffer.read())
url = sys.argv[1]
before = httpx.get(url + "/v1/runs/spawned", timeout=10).json()["ranks"][0]["session"]
holder.mc.log_lr(3, {"g": 0.3})
holder.mc.log_lr(4, {"g": 0.4})
flushed = holder.mc.flush(20)
after = httpx.get(url + "/v1/runs/spawned", timeout=10).json()["ranks"][0]["session"]
holder.mc.close()
print(json.dumps({"before": before, "after": after, "flushed": flushed, "weights": holder.weights}))
"""


def test_an_unpickled_client_in_another_process_opens_its_own_session_when_it_first_logs(url: str) -> None:
    holder = Holder(make(url, "spawned"))
    holder.mc.log_lr(1, {"g": 0.1})
    holder.mc.log_lr(2, {"g": 0.2})
    assert holder.mc.flush(10)
    parent_session = session_of_rank0(url, "spawned")
    blob = pickle.dumps(holder)
    assert TOKEN.encode() not in blob
    child = subprocess.run([sys.executable, "-c", CHILD, url], input=blob, cwd=ROOT, capture_output=True,
                           timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    report = json.loads(child.stdout.decode().strip().splitlines()[-1])
    assert report["before"] == parent_session, "unpickling alone opens no session"
    assert report["after"] != parent_session and report["flushed"] is True
    assert report["weights"] == [0.5, 1.5]
    info = httpx.get(f"{url}/v1/runs/spawned", timeout=10).json()
    assert info["ranks"][0]["last_step"] == 4 and info["counters"]["events"] >= 4  # the parent's and the child's
    holder.mc.close()
