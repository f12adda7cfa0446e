"""One line's webhook events: the request listener and threshold watcher that posts them to the
outbox, and the shared event stream other services read (with Redis)."""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from ..core import QuietListener
from ..lines.redis.boundary import logged
from ..linespec import LineSpec
from ..tickets import Status, Ticket
from .outbox import ATTEMPT_TIMEOUT_S, STREAM_MAX_LEN, Outbox

ENDINGS = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.TIMEOUT: "timeout",
    Status.CANCELLED: "cancelled",
    Status.ADMITTED: "admitted",
}
RECENT = 100  # requests the p95 wait and the failure rate are taken over
MIN_ENDINGS_FOR_RATE = 10  # fewer endings say nothing about a failure rate
HYSTERESIS = 0.8  # a threshold fires again only after its value fell below 80 % of it


class EventStream:
    """With Redis, every line's events also go to one capped stream (``{prefix}:events``), for other
    services to read as seed 004's consumers read its Kafka topic. Appending never waits."""

    def __init__(self, redis: aioredis.Redis, key: str, *, max_len: int = STREAM_MAX_LEN) -> None:
        self._redis, self.key, self._max_len = redis, key, max_len
        self._pending: set[asyncio.Task[None]] = set()

    def append(self, line: str, event: str, data: Mapping[str, Any]) -> None:
        task = asyncio.create_task(self._append(line, event, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _append(self, line: str, event: str, data: Mapping[str, Any]) -> None:
        fields = {"line": line, "event": event, "data": json.dumps(dict(data))}
        await logged(
            self._redis.xadd(self.key, fields, maxlen=self._max_len, approximate=True),  # type: ignore[arg-type]
            f"event not added to {self.key}",
        )

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=ATTEMPT_TIMEOUT_S)


class LineWebhooks(QuietListener):
    """One line's request listener (service.py) and threshold watcher: its events, to the
    subscribers that asked for them.

    Thresholds (``alert_queue_size``, ``alert_wait_p95_sec``, ``alert_failure_rate``) are read at
    every positions tick; each fires ``line_threshold`` once when crossed, and is armed again
    once its value falls below ``HYSTERESIS`` of the threshold. ``upstream_degraded`` fires when
    the upstream starts failing (/health's problems appear), once until they clear.
    """

    def __init__(self, outbox: Outbox, spec: LineSpec, stream: EventStream | None = None) -> None:
        self._outbox, self.spec, self._stream = outbox, spec, stream
        self._waits: deque[float] = deque(maxlen=RECENT)  # seconds, of the last requests that started
        self._failed: deque[bool] = deque(maxlen=RECENT)  # of the last endings: failed or timed out?
        self._above: set[str] = set()
        self._degraded = False

    def _post(self, event: str, data: Mapping[str, Any]) -> None:
        if self._stream is not None:
            self._stream.append(self.spec.name, event, data)
        for hook in self.spec.webhooks:
            if event in hook.events:
                self._outbox.post(self.spec.name, hook, event, data)

    def ended(self, ticket: Ticket) -> None:
        if ticket.wait_ms is not None and not ticket.from_cache:
            self._waits.append(ticket.wait_ms / 1000)
        if ticket.status is not Status.CANCELLED:
            self._failed.append(ticket.status in (Status.FAILED, Status.TIMEOUT))
        event = ENDINGS.get(ticket.status)
        if event is not None:
            self._post(event, ticket.summary())

    def check(self, queue_size: int, problems: list[str]) -> None:
        """Once per tick: the thresholds, and the upstream's health."""
        spec = self.spec
        self._threshold("queue_size", float(queue_size), float(spec.alert_queue_size))
        if self._waits:
            p95 = sorted(self._waits)[max(0, math.ceil(0.95 * len(self._waits)) - 1)]
            self._threshold("wait_p95_sec", p95, spec.alert_wait_p95_s)
        if len(self._failed) >= MIN_ENDINGS_FOR_RATE:
            self._threshold("failure_rate", sum(self._failed) / len(self._failed), spec.alert_failure_rate)
        degraded = bool(problems)
        if degraded and not self._degraded:
            self._post(
                "upstream_degraded",
                {
                    "line": spec.name,
                    "problems": problems,
                    "text": f"guestqueue line {spec.name}: {'; '.join(problems)}",
                },
            )
        self._degraded = degraded

    def _threshold(self, metric: str, value: float, limit: float) -> None:
        if limit <= 0:
            return
        if metric not in self._above and value >= limit:
            self._above.add(metric)
            self._post(
                "line_threshold",
                {
                    "line": self.spec.name,
                    "metric": metric,
                    "value": round(value, 3),
                    "threshold": limit,
                    "text": f"guestqueue line {self.spec.name}: {metric} is {value:g} (threshold {limit:g})",
                },
            )
        elif metric in self._above and value < limit * HYSTERESIS:
            self._above.discard(metric)
