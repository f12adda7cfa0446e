"""Totals and recent requests of every instance sharing a line, on Redis.

A request listener (service.py) like the in-process ``Stats``: each
admission, end and rejection adds to counters in one Redis hash, and each
admission pushes the request's id on a capped list; ``/queue/status``,
``/queue/history`` and ``/metrics`` read them back, so any instance gives the
same global picture. Averages are over every request since the counters
began (the in-process ``Stats`` averages the last 100), kept as sums and
counts so that instances can add to them without reading first.

Writes are fire-and-forget pipelines, one at a time: what is counted while
one is on its way goes in the next, so a busy line sends one pipeline per
round trip, not one per request. A lost Redis costs counts, never a guest's
request.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from ...stats import Stats
from ...tickets import Ticket
from .boundary import Spawned, call, text, unavailable
from .keys import Keys
from .places import summary

logger = logging.getLogger("guestqueue.lines.redis.tally")


class RedisTally:
    def __init__(self, redis: aioredis.Redis, keys: Keys, history_size: int) -> None:
        self._redis = redis
        self._keys = keys
        self._history_size = history_size
        self._spawn = Spawned("shared totals not updated")
        self._counts: dict[str, float] = {}  # not sent yet
        self._recent: list[str] = []
        self._sending = False

    # -- a RequestListener ------------------------------------------------------------

    def admitted(self, ticket: Ticket) -> None:
        counts: dict[str, float] = {"total_requests": 1}
        if ticket.from_cache:
            counts["cache_hits"] = 1
        elif ticket.cached:
            counts["shared_answers"] = 1
        self._write(counts, recent=ticket.id)

    def started(self, ticket: Ticket) -> None:
        return None

    def ended(self, ticket: Ticket) -> None:
        counts: dict[str, float] = {f"outcome:{ticket.status.value}": 1}
        if not ticket.cached and ticket.wait_ms is not None:
            counts.update({"wait_ms_sum": ticket.wait_ms, "wait_ms_count": 1})
        if not ticket.cached and ticket.duration_ms is not None:
            counts.update({"processing_ms_sum": ticket.duration_ms, "processing_ms_count": 1})
        self._write(counts)

    def rejected(self, client: str, query: str, code: str) -> None:
        self._write({f"rejection:{code}": 1})

    def _write(self, counts: dict[str, float], *, recent: str | None = None) -> None:
        for name, value in counts.items():
            self._counts[name] = self._counts.get(name, 0) + value
        if recent is not None and self._history_size > 0:
            self._recent.append(recent)
        if not self._sending:
            self._sending = True
            self._spawn(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._counts or self._recent:
                counts, recent = self._counts, self._recent
                self._counts, self._recent = {}, []
                await self._send(counts, recent)
        finally:
            self._sending = False

    async def _send(self, counts: dict[str, float], recent: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, value in counts.items():
                if isinstance(value, int):
                    pipe.hincrby(self._keys.totals, name, value)
                else:
                    pipe.hincrbyfloat(self._keys.totals, name, value)
            if recent:
                pipe.lpush(self._keys.recent, *recent)
                pipe.ltrim(self._keys.recent, 0, self._history_size - 1)
            await pipe.execute()

    # -- reading back -------------------------------------------------------------------

    async def stats(self, local: Stats) -> Stats:
        """A ``Stats`` with every instance's totals (this instance's uptime)."""
        raw = await call(self._redis.hgetall(self._keys.totals))
        totals = {text(k): float(text(v)) for k, v in raw.items()}
        shared = Stats()
        shared.started_mono = local.started_mono
        shared.total_requests = int(totals.get("total_requests", 0))
        shared.cache_hits = int(totals.get("cache_hits", 0))
        shared.shared_answers = int(totals.get("shared_answers", 0))
        for status in shared.outcomes:
            shared.outcomes[status] = int(totals.get(f"outcome:{status.value}", 0))
        for name, value in totals.items():
            if name.startswith("rejection:"):
                shared.rejections[name.partition(":")[2]] = int(value)
        for kind in ("wait", "processing"):
            count = totals.get(f"{kind}_ms_count", 0)
            if count:
                shared.set_average(kind, totals.get(f"{kind}_ms_sum", 0) / count)
        return shared

    async def recent(self) -> list[dict[str, Any]]:
        """The last ``history_size`` requests of every instance, newest first (their records)."""
        with unavailable():
            ids = [text(i) for i in await self._redis.lrange(self._keys.recent, 0, self._history_size - 1)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for request_id in ids:
                    pipe.hgetall(self._keys.ticket(request_id))
                records = await pipe.execute()
        return [
            summary(request_id, {text(k): text(v) for k, v in raw.items()})
            for request_id, raw in zip(ids, records, strict=True)
            if raw
        ]
