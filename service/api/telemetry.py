"""The service's own Prometheus metrics (``GET /metrics``).

Write cheap, read expensive: requests are counted by a tiny ASGI middleware; run and
sink figures are read from the run host only when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Telemetry:
    """One Prometheus registry per app, so several apps (tests) never share series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("linnaeus_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("linnaeus_http_request_duration_seconds", "HTTP request latency by route",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recovery = Gauge("linnaeus_recovery_seconds", "Time the last start spent recovering runs",
                              registry=self.registry)

    def watch_stream(self, hub: Any) -> None:
        """Read the live stream's figures (a StreamHub) at scrape time."""
        self.registry.register(_StreamCollector(hub))

    def watch(self, source: Any) -> None:
        """Read run and sink figures from ``source`` (the RunHost) at scrape time."""
        self.registry.register(_RegistryCollector(source))


class _StreamCollector(Collector):
    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        figures = self.hub.figures()
        readers = GaugeMetricFamily("linnaeus_stream_readers", "Connected readers of run streams")
        readers.add_metric([], figures["readers"])
        messages = CounterMetricFamily("linnaeus_stream_messages", "Messages published to run streams")
        messages.add_metric([], figures["published"])
        dropped = CounterMetricFamily("linnaeus_stream_dropped_readers", "Stream readers dropped for falling behind")
        dropped.add_metric([], figures["dropped_readers"])
        yield from (readers, messages, dropped)


class RequestMetrics:
    """Counts requests and times them, labelled by route template (never raw paths)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.telemetry.requests.labels(scope["method"], route, str(status[0])).inc()
            self.telemetry.latency.labels(scope["method"], route).observe(time.perf_counter() - started)


class _RegistryCollector(Collector):
    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        runs = GaugeMetricFamily("linnaeus_runs", "Runs held by the service", labels=["status"])
        counters = CounterMetricFamily("linnaeus_ingest", "Ingested totals over all runs", labels=["kind"])
        held = GaugeMetricFamily("linnaeus_held_events", "Events held behind checkpoint markers")
        sink = GaugeMetricFamily("linnaeus_sink", "Sink figures summed over runs", labels=["sink", "figure"])
        stats = self.source.telemetry_figures()
        for status, count in stats["runs"].items():
            runs.add_metric([status], count)
        for kind, value in stats["counters"].items():
            counters.add_metric([kind], value)
        held.add_metric([], stats["held"])
        for (name, figure), value in stats["sinks"].items():
            sink.add_metric([name, figure], value)
        images = CounterMetricFamily("linnaeus_image_writes", "Recovery images (snapshots) written")
        images.add_metric([], stats["images"]["writes"])
        image_time = CounterMetricFamily("linnaeus_image_write_seconds", "Time spent writing recovery images")
        image_time.add_metric([], stats["images"]["seconds"])
        groups = CounterMetricFamily("linnaeus_journal_commits", "Journal commits of event deliveries "
                                     "(a group of deliveries ingested together is one)")
        groups.add_metric([], stats["groups"]["commits"])
        grouped = CounterMetricFamily("linnaeus_journal_committed_deliveries",
                                      "Event deliveries made durable by those commits")
        grouped.add_metric([], stats["groups"]["deliveries"])
        yield from (runs, counters, held, sink, images, image_time, groups, grouped)
