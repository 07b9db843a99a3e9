"""Shared pieces of the benchmarks: machine facts, a service on 127.0.0.1, workloads, tables.

Every server started here listens on 127.0.0.1 only, is started with a bounded deadline and
is killed by ``stop()`` (SIGTERM, then SIGKILL after a bounded wait). Every load is bounded
in count; the scripts add a wall-clock budget on top.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The checkout whose client and service the benchmarks run: this one, or an earlier one named by
#: ``LINNAEUS_BENCH_TREE`` (to time it side by side with this one). It goes first on ``sys.path`` of
#: the bench process and on ``PYTHONPATH`` of every process it starts (the service, the trainers,
#: fresh runs): ``PYTHONPATH`` alone would not do, since this directory must come before the venv's
#: editable install and the bench process would import this checkout's client.
TREE = Path(os.environ.get("LINNAEUS_BENCH_TREE") or REPO).resolve()
if not (TREE / "service").is_dir() or not (TREE / "client").is_dir():
    raise SystemExit(f"LINNAEUS_BENCH_TREE={TREE}: not a checkout of this project (no service/ and client/)")
sys.path[:] = [str(TREE), *(p for p in sys.path if p != str(TREE))]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(TREE), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(TREE))])

import httpx  # noqa: E402

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
FAMILIES = {"rarity": ["common", "rare", "very_rare"], "mask": ["masked", "unmasked"]}
# the issue's standard batch: 256 samples, four tasks of growing width, top-3
TASKS4 = {"L50": 50, "L500": 500, "L2000": 2_000, "L10000": 10_000}


# ---------------------------------------------------------------- machine


def machine_lines() -> list[str]:
    """CPU model, cores and library versions, for the head of every table."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    try:
        import torch

        versions.append(f"torch {torch.__version__}")
    except ImportError:
        versions.append("torch (not installed)")
    return [f"machine: {model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "versions: " + ", ".join(versions), f"code: {TREE} at {_commit(TREE)}"]


def _commit(tree: Path) -> str:
    """The checkout's commit, with '+changes' when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD", "--", "client", "service"],
                               timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "an unknown commit"
    return head + (" +changes" if dirty else "")


def print_header(title: str, extra: Iterable[str] = ()) -> None:
    print("=" * 100)
    print(title)
    for line in [*machine_lines(), *extra]:
        print("  " + line)
    print("=" * 100, flush=True)


# ---------------------------------------------------------------- processes


def callgrind_main_thread(argv: Sequence[str], out: Path, timeout_s: float, tree: Path | None = None) -> int:
    """Instructions the main thread of ``python *argv`` executes, counted by ``valgrind --tool=callgrind``
    (``PYTHONHASHSEED=0``: repeatable runs); ``out`` names callgrind's files. With ``tree``, the child
    runs that checkout (``LINNAEUS_BENCH_TREE``), else the one this process runs."""
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
           sys.executable, *argv]
    env = {**os.environ, "PYTHONHASHSEED": "0", "LINNAEUS_BENCH_TREE": str((tree or TREE).resolve())}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout_s)
    for line in Path(f"{out}-01").read_text().splitlines():  # thread 1: the main thread
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out}-01")


def fresh_runs(script: str, child_args: Sequence[str], runs: int, timeout_s: float) -> list[dict[str, Any]]:
    """Run ``script --child *child_args`` in ``runs`` fresh processes, one after another; each prints its
    figures as one JSON line last. A failed run prints its stderr tail and exits with its status."""
    results = []
    for run in range(runs):
        cmd = [sys.executable, script, "--child", *child_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(proc.returncode)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[run {run + 1}/{runs} done]", file=sys.stderr, flush=True)
    return results


def exit_on_sigterm() -> None:
    """Turn SIGTERM (run_all's hard timeout) into SystemExit, so cleanup in ``finally`` runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the server then binds it itself)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_http_ok(url: str, deadline_s: float, proc: subprocess.Popen[Any] | None = None) -> str | None:
    """Poll ``url`` until it answers 200 (bounded); returns None or why it did not."""
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return f"process exited with {proc.returncode}"
        try:
            reply = httpx.get(url, timeout=2.0)
            if reply.status_code == 200:
                return None
            last = f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    return f"not ready within {deadline_s:.0f} s ({last})"


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; only the process we started, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class ServiceProcess:
    """``linnaeus-metrics serve`` on 127.0.0.1 and a free port, as a child process.

    Args:
        data_dir: the service's data dir (the caller owns and removes it).
        env: extra environment (``LINNAEUS_METRICS_*``, ``WANDB_*``).
    """

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**os.environ, "LINNAEUS_METRICS_WANDB_ENABLED": "false",
                    "LINNAEUS_METRICS_CONSOLE_ENABLED": "false", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = data_dir.parent / f"service-{self.port}.log"

    def start(self, deadline_s: float = 60.0) -> ServiceProcess:
        script = Path(sys.executable).with_name("linnaeus-metrics")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
        cmd += ["serve", "--host", LOOPBACK, "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--log-level", "warning"]
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=TREE)
        problem = wait_http_ok(f"{self.url}/readyz", deadline_s, self.proc)
        if problem is not None:
            self.stop()
            raise RuntimeError(f"service did not start: {problem}\n{self.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def prometheus(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, grace_s=40.0)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wandb_env(root: Path) -> dict[str, str]:
    """wandb offline, silent, every directory it writes under ``root``."""
    dirs = {name: root / name.lower() for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                                                   "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off", **{k: str(v) for k, v in dirs.items()}}


# ---------------------------------------------------------------- workloads


@dataclass
class Batch:
    """One training batch as a trainer would log it (numpy arrays; str label lists; logits optional)."""

    targets: dict[str, np.ndarray]
    topk: dict[str, np.ndarray]
    subsets: dict[str, list[str]]
    loss: float
    task_losses: dict[str, float]
    logits: dict[str, np.ndarray] | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.targets.values())))

    def subset_arrays(self) -> dict[str, np.ndarray]:
        """The subset labels as numpy str arrays (the other form a trainer may pass)."""
        return {f: np.array(v) for f, v in self.subsets.items()}


def make_batch(rng: np.random.Generator, tasks: Mapping[str, int], size: int, families: Mapping[str, list[str]],
               with_logits: bool = False, null_rate: float = 0.2, hit_rate: float = 0.6) -> Batch:
    """A seeded batch: ~``null_rate`` null targets (class 0), the target in the top-3 ~``hit_rate``."""
    targets, topk, logits = {}, {}, {}
    for name, classes in tasks.items():
        y = rng.integers(1, classes, size)
        y[rng.random(size) < null_rate] = 0
        top = _distinct_top3(rng, classes, size)
        hit = rng.random(size) < hit_rate
        top[hit, rng.integers(0, 3, size)[hit]] = y[hit]
        top = np.array([_dedupe(row, classes) for row in top], dtype=np.int64)
        targets[name], topk[name] = y, top
        if with_logits:
            scores = rng.standard_normal((size, classes), dtype=np.float32)
            scores[np.arange(size)[:, None], top] = np.float32(10.0) - np.arange(3, dtype=np.float32)
            logits[name] = scores
    subsets = {f: rng.choice(np.array(labels), size).tolist() for f, labels in families.items()}
    return Batch(targets, topk, subsets, float(rng.uniform(0.5, 3.0)),
                 {n: float(rng.uniform(0.1, 1.0)) for n in tasks}, logits if with_logits else None)


def _distinct_top3(rng: np.random.Generator, classes: int, size: int) -> np.ndarray:
    first = rng.integers(0, classes, size)
    gap = max(2, classes // 2)
    second = (first + rng.integers(1, gap, size)) % classes
    third = (second + rng.integers(1, gap, size)) % classes
    return np.stack([first, second, third], axis=1)


def _dedupe(row: np.ndarray, classes: int) -> list[int]:
    seen: list[int] = []
    for c in row.tolist():
        while c in seen:
            c = (c + 1) % classes
        seen.append(c)
    return seen


def batch_pool(seed: int, count: int, tasks: Mapping[str, int], size: int,
               families: Mapping[str, list[str]] = FAMILIES, with_logits: bool = False) -> list[Batch]:
    rng = np.random.default_rng(seed)
    return [make_batch(rng, tasks, size, families, with_logits) for _ in range(count)]


def metrics_config(**schedule: int) -> dict[str, Any]:
    return {"METRICS": {k.upper(): v for k, v in schedule.items()}}


def balanced_order(items: Sequence[T], round_: int) -> list[T]:
    """Round ``round_`` of a balanced Latin square (Williams' design) over ``items``.

    Over any ``len(items)`` consecutive rounds each item runs once in every position and, for an
    even count, directly after every other item once: no contender always follows the same one
    (a plain rotation keeps the same neighbours in every round).
    """
    n = len(items)
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]
    return [items[(i + round_) % n] for i in first]


class Interruptions:
    """What the machine takes from a running thread, seen by a tight loop of clock reads.

    On the shared 2-core VMs the host preempts the vCPU hundreds of times a second for
    10-100 µs (charged to the thread's CPU time as well), and the bench's other processes
    and threads add their share. A call of D µs meets an interruption of at least g µs with
    probability about rate(>= g) x D; once that reaches 1 %, the calls' p99 is set by the
    machine, whatever the call does. ``probe`` runs the loop; ``share`` gives that probability.
    """

    def __init__(self) -> None:
        self.gaps_ns: list[int] = []
        self.probed_ns = 0

    def probe(self, duration_s: float = 0.1, min_gap_ns: int = 5_000) -> None:
        """Spin for ``duration_s`` and keep every gap of at least ``min_gap_ns`` between two clock reads."""
        clock, gaps = time.perf_counter_ns, self.gaps_ns
        start = prev = clock()
        end = start + int(duration_s * 1e9)
        while prev < end:
            now = clock()
            if now - prev >= min_gap_ns:
                gaps.append(now - prev)
            prev = now
        self.probed_ns += prev - start

    def rate_per_s(self, at_least_ns: float) -> float:
        """Interruptions a second of at least ``at_least_ns``."""
        return sum(g >= at_least_ns for g in self.gaps_ns) / (self.probed_ns / 1e9) if self.probed_ns else 0.0

    def share(self, call_ns: float, at_least_ns: float) -> float:
        """The probability that a call of ``call_ns`` meets an interruption of at least ``at_least_ns``."""
        return self.rate_per_s(at_least_ns) * call_ns / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {"gaps_ns": self.gaps_ns, "probed_ns": self.probed_ns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interruptions:
        out = cls()
        out.gaps_ns, out.probed_ns = list(data["gaps_ns"]), int(data["probed_ns"])
        return out


# ---------------------------------------------------------------- numbers and tables


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def us(ns: float) -> str:
    """Nanoseconds as microseconds with sensible precision."""
    value = ns / 1e3
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def ratio(a: float, b: float) -> str:
    return "n/a" if not b or a != a or b != b else f"{a / b:.3f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def verdict(ok: bool) -> str:
    return "HOLDS" if ok else "FAILS"


class Budget:
    """A wall-clock budget: loads stop early (and say so) when it runs out."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def spent(self) -> float:
        return time.monotonic() - self.start


def histogram_buckets(prom_text: str, metric: str, labels: Mapping[str, str]) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of one Prometheus histogram series."""
    buckets: dict[float, float] = {}
    for line in prom_text.splitlines():
        if not line.startswith(f"{metric}_bucket{{"):
            continue
        head, value = line.rsplit(" ", 1)
        pairs = dict(p.split("=", 1) for p in head[head.index("{") + 1:head.rindex("}")].split(","))
        pairs = {k: v.strip('"') for k, v in pairs.items()}
        if all(pairs.get(k) == v for k, v in labels.items()):
            buckets[float(pairs["le"])] = buckets.get(float(pairs["le"]), 0.0) + float(value)
    return buckets


def merge_buckets(many: Iterable[Mapping[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for buckets in many:
        for le, count in buckets.items():
            out[le] = out.get(le, 0.0) + count
    return out


def bucket_quantiles(buckets: Mapping[float, float], quantiles: Sequence[float]) -> tuple[int, list[float]]:
    """Count and quantiles (interpolated linearly inside a bucket, like Prometheus)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return 0, [float("nan")] * len(quantiles)
    total = ordered[-1][1]
    out = []
    for q in quantiles:
        rank = q * total
        prev_le, prev_count = 0.0, 0.0
        for le, count in ordered:
            if count >= rank:
                if le == float("inf"):
                    out.append(prev_le)
                else:
                    share = 0.0 if count == prev_count else (rank - prev_count) / (count - prev_count)
                    out.append(prev_le + (le - prev_le) * share)
                break
            prev_le, prev_count = le, count
    return int(total), out


class Sampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` while it runs (peak tracking)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_kib = 0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop.set()
        self.join(5)
        return self.peak_kib
