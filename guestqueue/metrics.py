"""Prometheus metrics, from the app's own registry (two apps never collide).

Counters and gauges are read at scrape time from each line's
:class:`MetricsSource` (the runtime's view of its service, pool and line) and
from the request log, so nothing is counted twice; only the time histograms
are observed as they happen, as a listener of every request's end. Every
series of a line carries its ``line`` label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import QuietListener
from .requestlog import RequestLog
from .stats import Stats
from .tickets import Ticket

# (actual wait - predicted) / predicted, the prediction being the first `queued` event's
ETA_ERROR_BUCKETS = (-0.75, -0.5, -0.25, -0.15, -0.05, 0.05, 0.15, 0.25, 0.5, 1, 2)
MIN_PREDICTED_S = 1.0  # an error relative to a prediction under a second says little
ETA_RESULTS = ("early", "inside", "late")
TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MetricsSource(Protocol):
    """What one line's gauges and counters are read from at scrape time."""

    @property
    def stats(self) -> Stats: ...

    @property
    def upstream_calls(self) -> Counter[str]: ...

    def queue_size(self) -> int: ...

    def active_requests(self) -> int: ...

    def session_counts(self) -> dict[str, int] | None: ...  # an admission line's (waitingroom/sessions.py)

    def fair_shares(self) -> dict[str, Any] | None: ...  # a fair line's (fairness.py Shares.snapshot)


class Metrics:
    """Every line's metrics (each series labelled ``line``), and the request log's."""

    def __init__(self, log: RequestLog | None = None) -> None:
        self.registry = CollectorRegistry()
        self.log = log
        self.sources: dict[str, MetricsSource] = {}
        self.wait_seconds = Histogram(
            "guestqueue_wait_seconds",
            "Time from admission to start (or leaving the line)",
            ["line"],
            buckets=TIME_BUCKETS_S,
            registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "guestqueue_processing_seconds",
            "Time from start to the end of processing",
            ["line"],
            buckets=TIME_BUCKETS_S,
            registry=self.registry,
        )
        self.pacing_delay_seconds = Histogram(
            "guestqueue_pacing_delay_seconds",
            "Time an upstream call waited for the pacing limiter",
            ["line"],
            buckets=TIME_BUCKETS_S,
            registry=self.registry,
        )
        self.eta_error = Histogram(
            "guestqueue_eta_relative_error",
            "(actual wait - predicted wait) / predicted wait, at each start (the first queued event's estimate)",
            ["line"],
            buckets=ETA_ERROR_BUCKETS,
            registry=self.registry,
        )
        self.eta_range = PromCounter(
            "guestqueue_eta_range_starts",
            "Starts by where the actual wait fell against the predicted p10-p90 range: early, inside, late",
            ["line", "result"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "guestqueue_webhook_delivery_seconds",
            "Time one webhook delivery attempt took",
            ["result"],
            buckets=TIME_BUCKETS_S,
            registry=self.registry,
        )
        self.webhook_results: dict[str, int] = {}  # the outbox's counts (webhooks.py), read at scrape time
        self.registry.register(_Collector(self))

    def webhook_attempt(self, seconds: float, worked: bool) -> None:
        self.webhook_seconds.labels("ok" if worked else "error").observe(seconds)

    def timing(self, line: str) -> LineMetrics:
        """The listener that times ``line``'s requests (and the pool's pacing hook)."""
        return LineMetrics(self, line)

    def add(self, line: str, source: MetricsSource) -> None:
        """Count ``line`` from now on."""
        self.sources[line] = source

    def remove(self, line: str) -> None:
        """A deleted line's series disappear."""
        self.sources.pop(line, None)
        for histogram in (self.wait_seconds, self.processing_seconds, self.pacing_delay_seconds, self.eta_error):
            try:
                histogram.remove(line)
            except KeyError:
                pass
        for result in ETA_RESULTS:
            try:
                self.eta_range.remove(line, result)
            except KeyError:
                pass

    def render(self, line: str | None = None) -> tuple[bytes, str]:
        """Every series, or (``line``) that line's only."""
        registry: Any = self.registry if line is None else _OneLine(self.registry, line)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _OneLine:
    """A registry's series of one line (what generate_latest needs: collect())."""

    def __init__(self, registry: CollectorRegistry, line: str) -> None:
        self._registry, self._line = registry, line

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if s.labels.get("line") == self._line]
            if family.samples:
                yield family


class LineMetrics(QuietListener):
    """One line's time histograms: a request listener (service.py) and the pool's pacing hook."""

    def __init__(self, metrics: Metrics, line: str) -> None:
        self._wait = metrics.wait_seconds.labels(line)
        self._processing = metrics.processing_seconds.labels(line)
        self._pacing = metrics.pacing_delay_seconds.labels(line)
        self._eta_error = metrics.eta_error.labels(line)
        self._eta_range = {result: metrics.eta_range.labels(line, result) for result in ETA_RESULTS}

    def started(self, ticket: Ticket) -> None:
        """The wait it was told on joining against the wait it had (calibration, eta.py)."""
        if ticket.predicted is None or ticket.wait_ms is None or ticket.cached:
            return
        predicted_s, low_s, high_s = ticket.predicted
        actual_s = ticket.wait_ms / 1000
        self._eta_error.observe((actual_s - predicted_s) / max(predicted_s, MIN_PREDICTED_S))
        result = "early" if actual_s < low_s else "late" if actual_s > high_s else "inside"
        self._eta_range[result].inc()

    def ended(self, ticket: Ticket) -> None:
        if ticket.wait_ms is not None:
            self._wait.observe(ticket.wait_ms / 1000)
        if ticket.duration_ms is not None and not ticket.cached:
            self._processing.observe(ticket.duration_ms / 1000)

    def paced(self, waited_s: float) -> None:
        self._pacing.observe(waited_s)


def _family(kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, *labels: str) -> Any:
    return kind(name, doc, labels=["line", *labels])


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        size = _family(gauge, "guestqueue_queue_size", "Upstream calls waiting in line")
        active = _family(gauge, "guestqueue_active_requests", "Upstream calls being processed")
        admitted = _family(counter, "guestqueue_admitted_requests", "Requests admitted")
        outcomes = _family(counter, "guestqueue_requests", "Finished requests by outcome", "outcome")
        rejections = _family(counter, "guestqueue_rejections", "Rejected requests by reason", "reason")
        hits = _family(counter, "guestqueue_cache_hits", "Requests answered from the cache")
        shared = _family(
            counter, "guestqueue_shared_answers", "Requests answered by an identical request's upstream call"
        )
        calls = _family(counter, "guestqueue_upstream_calls", "Upstream calls by result", "result")
        granted = _family(counter, "guestqueue_admitted", "Guests an admission line let in (tokens issued)")
        expired = _family(counter, "guestqueue_sessions_expired", "Admission sessions that ran to their token's exp")
        ended = _family(counter, "guestqueue_sessions_ended", "Admission sessions ended, by how", "how")
        open_sessions = _family(gauge, "guestqueue_sessions_active", "Admission sessions holding a slot now")
        jain = _family(gauge, "guestqueue_fair_jain_index", "Jain's index of the service shares got in the last 60 s")
        served = _family(
            gauge,
            "guestqueue_fair_share_service",
            "Service (answer characters plus a cost per call) each share got in the last 60 s; addresses together",
            "share",
        )
        for line, source in sorted(self._metrics.sources.items()):
            if (sessions := source.session_counts()) is not None:
                granted.add_metric([line], sessions["admitted"])
                expired.add_metric([line], sessions["expired"])
                for how in ("completed", "expired", "revoked"):
                    ended.add_metric([line, how], sessions[how])
                open_sessions.add_metric([line], sessions["sessions_active"])
            if (fair := source.fair_shares()) is not None:
                if fair["jain_index"] is not None:
                    jain.add_metric([line], fair["jain_index"])
                for share, service in fair["service"].items():
                    served.add_metric([line, share], service)
            stats = source.stats
            size.add_metric([line], source.queue_size())
            active.add_metric([line], source.active_requests())
            admitted.add_metric([line], stats.total_requests)
            for status, count in stats.outcomes.items():
                outcomes.add_metric([line, status.value], count)
            for reason, count in sorted(stats.rejections.items()):
                rejections.add_metric([line, reason], count)
            hits.add_metric([line], stats.cache_hits)
            shared.add_metric([line], stats.shared_answers)
            for result, count in sorted(source.upstream_calls.items()):
                calls.add_metric([line, result], count)
        yield from (
            size,
            active,
            admitted,
            outcomes,
            rejections,
            hits,
            shared,
            calls,
            granted,
            expired,
            ended,
            open_sessions,
            jain,
            served,
        )
        deliveries = CounterMetricFamily(
            "guestqueue_webhook_deliveries", "Webhook deliveries by result", labels=["result"]
        )
        for result, count in sorted(self._metrics.webhook_results.items()):
            deliveries.add_metric([result], count)
        yield deliveries
        log = self._metrics.log
        if log is not None:
            yield CounterMetricFamily(
                "guestqueue_log_rows_written", "Rows written to the request log", value=log.rows_written
            )
            yield GaugeMetricFamily("guestqueue_log_backlog", "Rows waiting to be written", value=log.backlog)
            yield CounterMetricFamily(
                "guestqueue_log_rows_dropped",
                "Rows not logged because the buffer was full (GUEST_LOG_BUFFER_ROWS)",
                value=log.rows_dropped,
            )
            yield CounterMetricFamily(
                "guestqueue_log_rejections_unlogged",
                "Rejections left out of the log by its per-client sampling",
                value=log.rejections_unlogged,
            )
            yield CounterMetricFamily(
                "guestqueue_log_rows_pruned",
                "Rows deleted after GUEST_LOG_RETENTION_DAYS",
                value=log.rows_pruned,
            )
