"""Per-run Prometheus gauges (opt-in: ``export_run_metrics``), read at scrape time.

Write cheap, read expensive: nothing is recorded on the ingest path; a scrape asks the
runtime for a copy of the figures of at most ``max_runs`` runs (the most recently updated
active ones) and at most ``MAX_RANKS_PER_RUN`` ranks per run (the furthest behind), so the
number of series stays bounded however many runs and ranks the service holds:
``max_runs * (core keys + MAX_RANKS_PER_RUN + 2)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

MAX_RANKS_PER_RUN = 64


class RunFigures(Protocol):
    """Where the figures come from (the runtime)."""

    def export_figures(self, max_runs: int) -> Sequence[Mapping[str, Any]]:
        """Per run: ``run_id``, ``step``, ``core`` {key: value}, ``lags`` {rank: steps}, ``alerts``."""


class RunExport(Collector):
    """Each exported run's ``core/`` values, step, alert count and each rank's lag."""

    def __init__(self, source: RunFigures, max_runs: int) -> None:
        self.source = source
        self.max_runs = max_runs

    def collect(self) -> Iterator[Any]:
        """The gauges of one scrape."""
        core = GaugeMetricFamily("linnaeus_run_core", "Latest core/ value of a run", labels=["run_id", "key"])
        step = GaugeMetricFamily("linnaeus_run_step", "Global step every rank has completed", labels=["run_id"])
        lag = GaugeMetricFamily("linnaeus_run_rank_lag_steps", "Steps a rank is behind the run's fastest rank",
                                labels=["run_id", "rank"])
        alerts = CounterMetricFamily("linnaeus_run_alerts", "Alerts fired in a run", labels=["run_id"])
        for run in self.source.export_figures(self.max_runs):
            run_id = str(run["run_id"])
            step.add_metric([run_id], run["step"])
            alerts.add_metric([run_id], run["alerts"])
            for key, value in sorted(run["core"].items()):
                core.add_metric([run_id, key], value)
            for rank, behind in slowest(run["lags"], MAX_RANKS_PER_RUN):
                lag.add_metric([run_id, str(rank)], behind)
        yield from (core, step, lag, alerts)


def slowest(lags: Mapping[int, int], limit: int) -> list[tuple[int, int]]:
    """The ``limit`` ranks furthest behind, by rank (ties: lower rank first).

    >>> slowest({0: 0, 1: 5, 2: 0, 3: 2}, 2)
    [(1, 5), (3, 2)]
    """
    chosen = sorted(lags.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return sorted(chosen)
