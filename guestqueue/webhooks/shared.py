"""The webhooks' outbox shared by every instance (Redis): a pending delivery is a hash entry and a
due time in a sorted set under ``{prefix}:webhooks:``; any instance claims due deliveries (a claim
is a short lease: an instance that dies mid-attempt leaves it to another), so pending deliveries
survive the death of the instance that made them. See the package's docstring."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ..errors import LineUnavailable
from ..lines.redis.boundary import call, logged
from ..scripts import load_script
from ..stopping import stop_tasks
from .keeping import KEPT_ERRORS, Delivery

logger = logging.getLogger("guestqueue.webhooks.outbox")  # one outbox, one logger to filter on

CLAIM_LEASE_MS = 60_000  # a claimed delivery is another instance's again after this (its claimer died)
CLAIM_POLL_S = 0.2  # a shared outbox looks for due deliveries this often (at once after a local post)


class SharedKeeping:
    """Deliveries kept in Redis (the outbox's :class:`~guestqueue.webhooks.keeping.Keeping` when
    instances share it); claimed ones go to this instance's lanes (``enqueue``)."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, enqueue: Callable[[Delivery], None], *, flush_timeout_s: float
    ) -> None:
        """``flush_timeout_s``: at close, how long the last posts may take to reach Redis."""
        self._redis = redis
        self._enqueue = enqueue
        self._flush_timeout_s = flush_timeout_s
        self._due, self._pending = f"{prefix}:webhooks:due", f"{prefix}:webhooks:pending"
        self._failed_key = f"{prefix}:webhooks:failed"
        self._claim = redis.register_script(load_script("webhooks_claim"))
        self._posted = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._keeping: set[asyncio.Future[None]] = set()

    @property
    def waiting(self) -> int:
        return 0  # a retry waits in Redis, for whichever instance claims it

    async def open(self) -> None:
        self._claimer = asyncio.create_task(self._claim_loop(), name="guestqueue-webhooks-claim")

    async def stop_taking(self) -> None:
        if self._keeping:  # the last posts reach Redis, where another instance will send them
            await asyncio.wait(self._keeping, timeout=self._flush_timeout_s)
        await stop_tasks([self._claimer])

    async def close(self) -> None:
        pass  # nothing held open here: the client is the process's

    def post(self, delivery: Delivery) -> None:
        # Kept in Redis first; the claim loop (of any instance) sends it.
        task = asyncio.ensure_future(self._share(delivery))
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    async def before_first_attempt(self, delivery: Delivery) -> None:
        pass  # kept in Redis since its post

    async def again_later(self, delivery: Delivery, delay_s: float) -> None:
        await self._share(delivery, delay_s)  # due again then, for whichever instance claims it

    async def settle(self, delivery: Delivery, status: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._pending, delivery.id)
            pipe.zrem(self._due, delivery.id)
            if status == "failed":
                pipe.lpush(self._failed_key, json.dumps(delivery.failure()))
                pipe.ltrim(self._failed_key, 0, KEPT_ERRORS - 1)
            await logged(pipe.execute(), f"webhook {delivery.id} not settled in Redis")

    async def failed(self, here: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every instance's (this process's if Redis cannot say)."""
        try:
            raw = await call(self._redis.lrange(self._failed_key, 0, KEPT_ERRORS - 1))
        except LineUnavailable as exc:
            logger.warning("failed webhook deliveries not read: %s", exc.__cause__)
            return list(here)
        return [json.loads(item) for item in reversed(raw)]

    async def _share(self, delivery: Delivery, due_in_s: float = 0.0) -> None:
        kept = json.dumps(
            {
                "id": delivery.id,
                "line": delivery.line,
                "event": delivery.event,
                "url": delivery.url,
                "secret": delivery.secret,
                "body": delivery.body.decode(),
                "attempts": delivery.attempts,
                "last_error": delivery.last_error,
            }
        )
        now_ms = round(time.time() * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._pending, delivery.id, kept)
            pipe.zadd(self._due, {delivery.id: now_ms + round(due_in_s * 1000)})
            shared = await logged(pipe.execute(), f"webhook {delivery.id} kept in this process only")
        if not shared:  # kept here instead: sent by this instance
            if due_in_s <= 0:
                self._enqueue(delivery)
            return
        self._posted.set()

    async def _claim_loop(self) -> None:
        while True:
            self._posted.clear()
            try:
                claimed = await call(self._claim(keys=[self._due, self._pending], args=[CLAIM_LEASE_MS, 20]))
            except LineUnavailable as exc:
                logger.warning("webhook deliveries not claimed: %s", exc.__cause__)
                await asyncio.sleep(1.0)  # Redis is away: ask again in a while, not five times a second
                continue
            for raw in claimed:
                kept = json.loads(raw)
                self._enqueue(
                    Delivery(
                        kept["id"],
                        kept["line"],
                        kept["event"],
                        kept["url"],
                        kept["secret"],
                        kept["body"].encode(),
                        kept["attempts"],
                        kept["last_error"],
                    )
                )
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._posted.wait(), CLAIM_POLL_S)
