"""The webhooks' outbox: deliveries kept (SQLite, or Redis when instances share them: keeping.py,
shared.py) before the first attempt, sent in per-URL lanes, signed, retried with backoff (see the
package's docstring)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx
import redis.asyncio as aioredis

from ..linespec import Webhook
from ..outbound import CHAT_HOSTS
from ..stopping import stop_tasks
from .keeping import KEPT_ERRORS, Delivery, Keeping, LocalKeeping
from .shared import SharedKeeping

logger = logging.getLogger("guestqueue.webhooks.outbox")

RETRIES = 3
ATTEMPT_TIMEOUT_S = 10.0
# Attempts at once, over every URL. The outbox has HTTP clients (and connection pools) of its own
# (web/app.py), so hanging receivers never take a guest's upstream connection; within this many,
# each URL's lane goes on whatever the others do.
MAX_IN_FLIGHT = 32
STREAM_MAX_LEN = 100_000  # entries kept in the shared event stream (about, as MAXLEN ~)


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: what a receiver computes from the body and compares (hmac.compare_digest)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Outbox:
    """Every line's deliveries: kept (SQLite, or Redis with ``redis``) before they are tried, sent
    from one lane per URL."""

    def __init__(
        self,
        *,
        db_path: str,
        client: httpx.AsyncClient,
        backoff_s: float = 1.0,
        redis: aioredis.Redis | None = None,
        prefix: str = "guestqueue",
        max_in_flight: int = MAX_IN_FLIGHT,
        guarded: httpx.AsyncClient | None = None,
        trusted_urls: Collection[str] = (),
    ) -> None:
        # Shared: the pending deliveries live in Redis (and db_path is not used).
        self._kept: Keeping = (
            SharedKeeping(redis, prefix, self._enqueue, flush_timeout_s=ATTEMPT_TIMEOUT_S)
            if redis is not None
            else LocalKeeping(db_path, self._enqueue)
        )
        self._client = client
        # The operator's webhook URLs (the file's) may reach any address; every other URL goes
        # through the guarded client, which connects only where the outbound rule allows.
        self._guarded = guarded or client
        self._trusted_urls = frozenset(trusted_urls)
        self._backoff_s = backoff_s
        self._slots = asyncio.Semaphore(max_in_flight)  # held for each attempt
        # Invariant: a URL has a lane (queued deliveries) exactly while its sender task runs; the
        # task removes it when the lane is empty, so the dict holds only URLs with work.
        self._lanes: dict[str, deque[Delivery]] = {}
        self._senders: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # ids queued or in flight here (a lease that ran out is not a second copy)
        self._closing = False
        self.results: dict[str, int] = {"delivered": 0, "retried": 0, "failed": 0}
        self.on_attempt: list[Callable[[float, bool], None]] = []  # seconds it took, whether it worked (metrics)
        self.failures: list[dict[str, Any]] = []  # the last KEPT_ERRORS given up, newest last

    def __repr__(self) -> str:
        queued = sum(len(lane) for lane in self._lanes.values())
        return f"Outbox(pending={queued + self._kept.waiting}, lanes={len(self._lanes)}, {self.results})"

    async def open(self) -> None:
        await self._kept.open()

    async def close(self) -> None:
        await self._kept.stop_taking()
        self._closing = True  # no lane starts from here on (nor from a retry's timer that fires late)
        await stop_tasks(list(self._senders))
        self._lanes.clear()  # a lane whose task was cancelled before it ever ran
        await self._kept.close()

    def post(self, line: str, hook: Webhook, event: str, data: Mapping[str, Any]) -> str:
        """Queue one delivery (never waits); returns its id."""
        delivery_id = secrets.token_hex(12)
        payload: dict[str, Any] = {
            "id": delivery_id,
            "event": event,
            "line": line,
            "created_at": time.time(),
            "data": dict(data),
        }
        host = httpx.URL(hook.url).host
        if any(host == chat or host.endswith("." + chat) for chat in CHAT_HOSTS):
            # Slack and Teams incoming webhooks show "text" and refuse other shapes.
            payload = {"text": str(data.get("text") or f"guestqueue line {line}: {event}")}
        body = json.dumps(payload).encode()
        self._kept.post(Delivery(delivery_id, line, event, hook.url, hook.secret, body))
        return delivery_id

    async def failed(self) -> list[dict[str, Any]]:
        """The deliveries given up, newest last (every instance's, when shared)."""
        return await self._kept.failed(self.failures)

    # -- the lanes: one per URL, one attempt at a time ------------------------------------

    def _enqueue(self, delivery: Delivery) -> None:
        if self._closing or delivery.id in self._held:  # held: claimed again while it waited its turn
            return
        self._held.add(delivery.id)
        lane = self._lanes.get(delivery.url)
        if lane is None:
            lane = self._lanes[delivery.url] = deque()
            task = asyncio.create_task(self._send_lane(delivery.url, lane), name="guestqueue-webhooks")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        lane.append(delivery)

    async def _send_lane(self, url: str, lane: deque[Delivery]) -> None:
        try:
            while lane:
                delivery = lane.popleft()
                try:
                    if delivery.attempts == 0:
                        await self._kept.before_first_attempt(delivery)
                    async with self._slots:
                        await self._attempt(delivery)
                except Exception:  # one bad delivery never stops the others
                    logger.exception("webhook delivery %s", delivery.id)
                finally:
                    self._held.discard(delivery.id)
        finally:
            del self._lanes[url]  # idle (or stopped): the URL's next delivery opens a new lane

    async def _attempt(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "X-Guestqueue-Event": delivery.event,
            "X-Guestqueue-Delivery": delivery.id,
            "X-Guestqueue-Signature": signature(delivery.secret, delivery.body),
        }
        began = time.monotonic()
        try:
            client = self._client if delivery.url in self._trusted_urls else self._guarded
            answer = await client.post(delivery.url, content=delivery.body, headers=headers, timeout=ATTEMPT_TIMEOUT_S)
            error = None if answer.is_success else f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        for hook in self.on_attempt:
            hook(time.monotonic() - began, error is None)
        if error is None:
            self.results["delivered"] += 1
            await self._kept.settle(delivery, "delivered")
            return
        delivery.last_error = error
        if delivery.attempts > RETRIES:
            self.results["failed"] += 1
            self.failures = [*self.failures, delivery.failure()][-KEPT_ERRORS:]
            logger.warning("webhook %s to %s failed %d times: %s", delivery.id, delivery.url, delivery.attempts, error)
            await self._kept.settle(delivery, "failed")
            return
        self.results["retried"] += 1
        delay_s = self._backoff_s * 2 ** (delivery.attempts - 1) * random.uniform(0.5, 1.0)
        await self._kept.again_later(delivery, delay_s)
