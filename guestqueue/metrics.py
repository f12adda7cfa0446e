"""Prometheus metrics, from the app's own registry (two apps never collide).

Counters and gauges are read from the service's own stats at scrape time, so
nothing is counted twice; only the time histograms are observed as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .service import QueueService

TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, service: QueueService) -> None:
        self.registry = CollectorRegistry()
        self.wait_seconds = Histogram(
            "guestqueue_wait_seconds", "Time from admission to start (or leaving the line)",
            buckets=TIME_BUCKETS_S, registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "guestqueue_processing_seconds", "Time from start to the end of processing",
            buckets=TIME_BUCKETS_S, registry=self.registry,
        )
        self.pacing_delay_seconds = Histogram(
            "guestqueue_pacing_delay_seconds", "Time an upstream call waited for the pacing limiter",
            buckets=TIME_BUCKETS_S, registry=self.registry,
        )
        self.registry.register(_ServiceCollector(service))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ServiceCollector(Collector):
    def __init__(self, service: QueueService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service
        stats = service.stats
        yield GaugeMetricFamily("guestqueue_queue_size", "Upstream calls waiting in line", value=len(service.line))
        yield GaugeMetricFamily(
            "guestqueue_active_requests", "Upstream calls being processed", value=len(service.pool.active)
        )
        yield CounterMetricFamily("guestqueue_admitted_requests", "Requests admitted", value=stats.total_requests)
        outcomes = CounterMetricFamily("guestqueue_requests", "Finished requests by outcome", labels=["outcome"])
        for status, count in stats.outcomes.items():
            outcomes.add_metric([status.value], count)
        yield outcomes
        rejections = CounterMetricFamily("guestqueue_rejections", "Rejected requests by reason", labels=["reason"])
        for reason, count in sorted(stats.rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections
        yield CounterMetricFamily("guestqueue_cache_hits", "Requests answered from the cache", value=stats.cache_hits)
        yield CounterMetricFamily(
            "guestqueue_shared_answers", "Requests answered by an identical request's upstream call",
            value=stats.shared_answers,
        )
        calls = CounterMetricFamily("guestqueue_upstream_calls", "Upstream calls by result", labels=["result"])
        for result, count in sorted(service.pool.upstream_calls.items()):
            calls.add_metric([result], count)
        yield calls
        if service.log is not None:
            yield CounterMetricFamily(
                "guestqueue_log_rows_written", "Rows written to the request log", value=service.log.rows_written
            )
            yield GaugeMetricFamily("guestqueue_log_backlog", "Rows waiting to be written", value=service.log.backlog)
            yield CounterMetricFamily(
                "guestqueue_log_rows_dropped", "Rows not logged because the buffer was full (GUEST_LOG_BUFFER_ROWS)",
                value=service.log.rows_dropped,
            )
            yield CounterMetricFamily(
                "guestqueue_log_rejections_unlogged", "Rejections left out of the log by its per-client sampling",
                value=service.log.rejections_unlogged,
            )
            yield CounterMetricFamily(
                "guestqueue_log_rows_pruned", "Rows deleted after GUEST_LOG_RETENTION_DAYS",
                value=service.log.rows_pruned,
            )
