"""Issue 13, items 4, 5, 6, 10, 11 and 13 with the real CLI (``serve`` in a subprocess), real
SQLite files damaged on disk, real ``kill -9``, raw sockets and, where the test may mount one,
a real full filesystem."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from client._wire import encode_event
from tests.conftest import make_run, stream_events
from tests.e2e.conftest import ServiceProcess, free_port

pytestmark = pytest.mark.e2e
METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4}
DATA = make_run(41, world_size=1, steps_per_epoch=4, epochs=1)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; each pause is a bounded wait on nothing but time passing."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: its timed wait is the poll's pause
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        pause.wait(0.05)


def _fill(url: str, run: str, events: int = 3) -> int:
    """Create ``run`` and deliver its first ``events`` events; returns the acknowledged seq."""
    assert httpx.post(f"{url}/v1/runs", json=DATA.spec(run, METRICS), timeout=10).status_code == 201
    session = httpx.post(f"{url}/v1/runs/{run}/sessions", json={"rank": 0}, timeout=10).json()["session"]
    body = {"session": session, "seq": 0, "events": [encode_event(e, False) for e in stream_events(DATA, 0)[:events]]}
    reply = httpx.post(f"{url}/v1/runs/{run}/events", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    return int(reply.json()["acked_seq"])


def _digest(directory: Path) -> dict[str, str]:
    """Every file's hash but the lock's (it names the process holding it)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def _serve_and_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**ServiceProcess(Path(), 0).env, **(env or {})})


# ---------------------------------------------------------------- item 4: a store that cannot be opened

@pytest.mark.parametrize("damage", ["scribbled", "truncated"])
def test_a_damaged_store_takes_no_writes(tmp_path: Path, damage: str) -> None:
    data_dir = tmp_path / "data"
    service = ServiceProcess(data_dir, free_port()).start()
    _fill(service.url, "kept", events=4)
    assert service.terminate() in (0, -15)  # a clean stop: everything is in the main file
    db = data_dir / "metrics.sqlite3"
    raw = db.read_bytes()
    if damage == "scribbled":
        db.write_bytes(raw[:100] + b"scribbled over by a disk fault " * (len(raw) // 31))
    else:
        db.write_bytes(raw[: len(raw) // 2])
    before = _digest(data_dir)
    service.start(ready=False)
    ready = httpx.get(f"{service.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready", ready.text
    for path, body in (("/v1/runs", DATA.spec("new", METRICS)), ("/v1/runs/kept/sessions", {"rank": 0})):
        refused = httpx.post(service.url + path, json=body, timeout=10)
        assert refused.status_code == 503 and refused.json()["type"] == "not_ready", refused.text
    assert service.terminate() in (0, -15)
    assert _digest(data_dir) == before  # nothing acknowledged, nothing written over the damaged file


# ---------------------------------------------------------------- item 5: quarantine of a run that cannot be replayed

def _damage_journal(db: Path, run: str) -> list[tuple[int, bytes]]:
    """Scribble over the payload of ``run``'s journal rows; returns the originals (for the repair)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, payload FROM commands WHERE run_id = ? AND kind = 'events'", (run,)).fetchall()
        assert rows, "the run has no journaled events"
        conn.execute("UPDATE commands SET payload = ? WHERE id = ?", (b"\xc1\xc1 disk fault", rows[0][0]))
    return rows


def test_a_run_that_cannot_be_replayed_is_quarantined_and_the_others_serve(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = ServiceProcess(data_dir, free_port()).start()
    acked = {run: _fill(service.url, run) for run in ("first", "broken", "after")}
    service.kill9()
    originals = _damage_journal(data_dir / "metrics.sqlite3", "broken")
    service.start()  # ready: one damaged run does not block the others
    ready = httpx.get(f"{service.url}/readyz", timeout=10).json()
    assert set(ready["quarantined"]) == {"broken"}, ready
    listed = {r["run_id"]: r for r in httpx.get(f"{service.url}/v1/runs", timeout=10).json()["runs"]}
    assert listed["broken"]["status"] == "quarantined" and listed["broken"]["reason"]
    for run in ("first", "after"):
        info = httpx.get(f"{service.url}/v1/runs/{run}", timeout=10).json()
        assert info["counters"]["events"] == acked[run], info
    # refused, and never re-created over its old data
    for method, path, body in (("POST", "/v1/runs", DATA.spec("broken", METRICS)),
                               ("POST", "/v1/runs/broken/sessions", {"rank": 0}),
                               ("GET", "/v1/runs/broken", None)):
        reply = httpx.request(method, service.url + path, json=body, timeout=10)
        assert reply.status_code == 409 and reply.json()["type"] == "run_quarantined", reply.text
        assert "quarantined" in reply.json()["detail"]
    assert _fill(service.url, "newer") == 3  # the service takes new runs as usual
    # repaired on disk and restarted: the run comes back with every acknowledged event
    service.kill9()
    with sqlite3.connect(data_dir / "metrics.sqlite3") as conn:
        conn.executemany("UPDATE commands SET payload = ? WHERE id = ?", [(p, i) for i, p in originals])
    service.start()
    assert "quarantined" not in httpx.get(f"{service.url}/readyz", timeout=10).json()
    assert httpx.get(f"{service.url}/v1/runs/broken", timeout=10).json()["counters"]["events"] == acked["broken"]
    assert service.terminate() in (0, -15)


# ---------------------------------------------------------------- item 6: a full disk is not ready

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (needs the right to mount; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({done.stderr.strip()}); "
                    "the full disk is covered by SQLite's max_page_count in tests/api")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_disk(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_shows_as_not_ready_and_refuses_writes(small_fs: Path) -> None:
    env = {"LINNAEUS_METRICS_READINESS_PROBE_INTERVAL_S": "0"}
    service = ServiceProcess(small_fs / "data", free_port(), env=env).start()
    _fill(service.url, "r")
    filler = _fill_disk(small_fs)
    for _ in range(5):  # every poll, not just one
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 503
    refused = httpx.post(f"{service.url}/v1/runs", json=DATA.spec("other", METRICS), timeout=10)
    assert refused.status_code == 503, refused.text
    service.kill9()
    service.start(ready=False)  # a restart on the full disk does not come up ready
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 503
    filler.unlink()
    _wait(lambda: httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200, 20, "ready once there is room")
    assert httpx.post(f"{service.url}/v1/runs", json=DATA.spec("other", METRICS), timeout=10).status_code == 201
    assert service.terminate() in (0, -15)


# ---------------------------------------------------------------- item 13: the main file holds the data

def _runs_in_main_file_only(db: Path, scratch: Path) -> set[str]:
    """Copy only the main file (as a naive backup would) and read the runs it holds."""
    copy = scratch / "copy.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT run_id FROM commands UNION SELECT run_id FROM images")}
    except sqlite3.OperationalError:  # not even the tables are in the main file yet
        return set()
    finally:
        conn.close()


def test_the_wal_is_checkpointed_regularly_and_at_shutdown(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = ServiceProcess(data_dir, free_port(), env={"LINNAEUS_METRICS_WAL_CHECKPOINT_INTERVAL_S": "0.2"}).start()
    _fill(service.url, "r1")
    db = data_dir / "metrics.sqlite3"
    _wait(lambda: "r1" in _runs_in_main_file_only(db, tmp_path), 20, "r1 in the main file")
    _fill(service.url, "r2")
    assert service.terminate() in (0, -15)
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert {"r1", "r2"} <= _runs_in_main_file_only(db, tmp_path)
    # issue 14, item 9: every log line has a timestamp (uvicorn's too); run creation is logged
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in service.lines), service.log()
    assert any("uvicorn" in line or "Uvicorn" in line or "Started server process" in line for line in service.lines)
    assert any("run r1 created" in line for line in service.lines), service.log()


# ---------------------------------------------------------------- item 11: one service per data dir; a busy port

def test_a_second_service_on_the_same_data_dir_exits_before_touching_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ServiceProcess(data_dir, free_port()).start()
    _fill(first.url, "r")
    before = {k: v for k, v in _digest(data_dir).items() if not k.startswith("metrics.sqlite3")}
    db_files = sorted(p.name for p in data_dir.iterdir())
    second = _serve_and_exit("--data-dir", str(data_dir), "--port", str(free_port()), "--wandb-enabled",
                             env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-second")})
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another linnaeus-metrics service" in lines[0], second.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == db_files
    assert {k: v for k, v in _digest(data_dir).items() if not k.startswith("metrics.sqlite3")} == before
    assert not (tmp_path / "wandb-second").exists()  # no wandb run was opened
    assert httpx.get(f"{first.url}/v1/runs/r", timeout=10).json()["status"] == "active"
    assert first.terminate() in (0, -15)


def test_a_busy_port_exits_before_loading_anything(tmp_path: Path) -> None:
    first = ServiceProcess(tmp_path / "first", free_port()).start()
    other = tmp_path / "other"
    busy = _serve_and_exit("--data-dir", str(other), "--port", str(first.port), "--wandb-enabled",
                           env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-other")})
    assert busy.returncode != 0
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{first.port}" in lines[0], busy.stderr
    assert not (other / "metrics.sqlite3").exists()
    assert not (tmp_path / "wandb-other").exists()
    assert first.terminate() in (0, -15)


# ---------------------------------------------------------------- item 10: slow and half-sent requests

def _closed_within(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_half_sent_requests_are_closed_after_the_read_timeouts(tmp_path: Path) -> None:
    env = {"LINNAEUS_METRICS_HEADER_TIMEOUT_S": "0.5", "LINNAEUS_METRICS_BODY_TIMEOUT_S": "1"}
    service = ServiceProcess(tmp_path / "data", free_port(), env=env).start()
    address = ("127.0.0.1", service.port)
    idle = [socket.create_connection(address, timeout=5) for _ in range(50)]
    half_headers = socket.create_connection(address, timeout=5)
    half_headers.sendall(b"POST /v1/runs HTTP/1.1\r\nhost: t\r\ncontent-")
    half_body = socket.create_connection(address, timeout=5)
    half_body.sendall(b"POST /v1/runs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"run_id\": ")
    started = time.monotonic()
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200  # good requests are served meanwhile
    for sock in (half_headers, half_body, *idle):
        assert _closed_within(sock, 10), "a half-sent request stayed open"
        sock.close()
    assert time.monotonic() - started < 10
    assert _fill(service.url, "r") == 3  # and nothing of the half-sent run was created
    assert [r["run_id"] for r in httpx.get(f"{service.url}/v1/runs", timeout=5).json()["runs"]] == ["r"]
    assert service.terminate() in (0, -15)
