"""Prometheus metrics, from the app's own registry (two apps never collide).

Counters and gauges are read at scrape time from a :class:`MetricsSource`
(the runtime's view of the service, pool, line and log), so nothing is counted
twice; only the time histograms are observed as they happen, as a listener of
every request's end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .history import Stats
from .store import RequestLog
from .tickets import Ticket

TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MetricsSource(Protocol):
    """What the gauges and counters are read from at scrape time."""

    @property
    def stats(self) -> Stats: ...

    @property
    def log(self) -> RequestLog | None: ...

    @property
    def upstream_calls(self) -> Counter[str]: ...

    def queue_size(self) -> int: ...

    def active_requests(self) -> int: ...


class Metrics:
    def __init__(self, source: MetricsSource) -> None:
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
        self.registry.register(_Collector(source))

    # -- a RequestListener (service.py) ----------------------------------------------

    def admitted(self, ticket: Ticket) -> None:
        return None

    def started(self, ticket: Ticket) -> None:
        return None

    def rejected(self, client: str, query: str, code: str) -> None:
        return None

    def ended(self, ticket: Ticket) -> None:
        if ticket.wait_ms is not None:
            self.wait_seconds.observe(ticket.wait_ms / 1000)
        if ticket.duration_ms is not None and not ticket.cached:
            self.processing_seconds.observe(ticket.duration_ms / 1000)

    def paced(self, waited_s: float) -> None:
        self.pacing_delay_seconds.observe(waited_s)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._source
        stats = service.stats
        yield GaugeMetricFamily("guestqueue_queue_size", "Upstream calls waiting in line", value=service.queue_size())
        yield GaugeMetricFamily(
            "guestqueue_active_requests", "Upstream calls being processed", value=service.active_requests()
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
        for result, count in sorted(service.upstream_calls.items()):
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
