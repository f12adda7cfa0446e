"""The webhooks' outbox: deliveries kept (SQLite, or Redis when instances share them) before the
first attempt, sent in per-URL lanes, signed, retried with backoff (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiosqlite
import httpx
import redis.asyncio as aioredis

from ..errors import LineUnavailable
from ..lines.redis.boundary import call, logged
from ..linespec import Webhook
from ..outbound import CHAT_HOSTS
from ..requestlog import migrate
from ..scripts import load_script
from ..stopping import stop_tasks

logger = logging.getLogger("guestqueue.webhooks.outbox")

RETRIES = 3
ATTEMPT_TIMEOUT_S = 10.0
# Attempts at once, over every URL. The outbox has HTTP clients (and connection pools) of its own
# (web/app.py), so hanging receivers never take a guest's upstream connection; within this many,
# each URL's lane goes on whatever the others do.
MAX_IN_FLIGHT = 32
KEPT_ERRORS = 100  # failed deliveries listed by callback_errors
STREAM_MAX_LEN = 100_000  # entries kept in the shared event stream (about, as MAXLEN ~)
CLAIM_LEASE_MS = 60_000  # a claimed delivery is another instance's again after this (its claimer died)
CLAIM_POLL_S = 0.2  # a shared outbox looks for due deliveries this often (at once after a local post)


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: what a receiver computes from the body and compares (hmac.compare_digest)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Delivery:
    id: str
    line: str
    event: str
    url: str
    secret: str
    body: bytes
    attempts: int = 0
    last_error: str | None = None
    timer: asyncio.TimerHandle | None = None  # the wait before its next attempt


class Outbox:
    """Every line's deliveries: kept (SQLite) before they are tried, sent from one lane per URL."""

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
        self._db_path = db_path if redis is None else ""  # shared: the pending deliveries live in Redis
        self._redis = redis
        self._due, self._pending = f"{prefix}:webhooks:due", f"{prefix}:webhooks:pending"
        self._failed_key = f"{prefix}:webhooks:failed"
        self._claim = redis.register_script(load_script("webhooks_claim")) if redis is not None else None
        self._posted = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._db: aiosqlite.Connection | None = None
        self._client = client
        # The operator's webhook URLs (the file's) may reach any address; every other URL goes
        # through the guarded client, which connects only where the outbound rule allows.
        self._guarded = guarded or client
        self._trusted_urls = frozenset(trusted_urls)
        self._backoff_s = backoff_s
        self._slots = asyncio.Semaphore(max_in_flight)  # held for each attempt
        # Invariant: a URL has a lane (queued deliveries) exactly while its sender task runs; the
        # task removes it when the lane is empty, so the dict holds only URLs with work.
        self._lanes: dict[str, deque[_Delivery]] = {}
        self._senders: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # ids queued or in flight here (a lease that ran out is not a second copy)
        self._closing = False
        self._waiting: set[asyncio.TimerHandle] = set()
        self._keeping: set[asyncio.Future[None]] = set()
        self.results: dict[str, int] = {"delivered": 0, "retried": 0, "failed": 0}
        self.on_attempt: list[Callable[[float, bool], None]] = []  # seconds it took, whether it worked (metrics)
        self.failures: list[dict[str, Any]] = []  # the last KEPT_ERRORS given up, newest last

    def __repr__(self) -> str:
        queued = sum(len(lane) for lane in self._lanes.values())
        return f"Outbox(pending={queued + len(self._waiting)}, lanes={len(self._lanes)}, {self.results})"

    async def open(self) -> None:
        if self._db_path:
            self._db = await aiosqlite.connect(self._db_path)
            await self._db.execute("PRAGMA busy_timeout=5000")
            await migrate(self._db)
            rows = await self._db.execute_fetchall(
                "SELECT id, line, event, url, secret, body, attempts FROM webhook_deliveries "
                "WHERE status = 'pending' ORDER BY created_at"
            )
            for row in rows:  # left by the last run: sent now
                delivery_id, line, event, url, secret, body, attempts = row
                self._enqueue(_Delivery(delivery_id, line, event, url, secret, bytes(body), attempts))
        if self._redis is not None:
            self._claimer = asyncio.create_task(self._claim_loop(), name="guestqueue-webhooks-claim")

    async def close(self) -> None:
        for timer in self._waiting:
            timer.cancel()
        if self._keeping:  # the last posts reach Redis, where another instance will send them
            await asyncio.wait(self._keeping, timeout=ATTEMPT_TIMEOUT_S)
        self._closing = True  # no lane starts from here on (nor from a retry's timer that fires late)
        await stop_tasks([self._claimer, *self._senders])
        self._lanes.clear()  # a lane whose task was cancelled before it ever ran
        if self._db is not None:
            await self._db.close()

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
        delivery = _Delivery(delivery_id, line, event, hook.url, hook.secret, body)
        if self._redis is not None:  # kept in Redis first; the claim loop (of any instance) sends it
            task = asyncio.ensure_future(self._share(delivery))
            self._keeping.add(task)
            task.add_done_callback(self._keeping.discard)
        else:
            self._enqueue(delivery)
        return delivery_id

    async def failed(self) -> list[dict[str, Any]]:
        """The deliveries given up, newest last (every instance's, when shared)."""
        if self._redis is None:
            return list(self.failures)
        try:
            raw = await call(self._redis.lrange(self._failed_key, 0, KEPT_ERRORS - 1))
        except LineUnavailable as exc:
            logger.warning("failed webhook deliveries not read: %s", exc.__cause__)
            return list(self.failures)
        return [json.loads(item) for item in reversed(raw)]

    # -- shared through Redis ----------------------------------------------------------

    async def _share(self, delivery: _Delivery, due_in_s: float = 0.0) -> None:
        assert self._redis is not None
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
        assert self._claim is not None
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
                    _Delivery(
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

    async def _settle_shared(self, delivery: _Delivery, status: str) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._pending, delivery.id)
            pipe.zrem(self._due, delivery.id)
            if status == "failed":
                pipe.lpush(self._failed_key, json.dumps(self._failure(delivery)))
                pipe.ltrim(self._failed_key, 0, KEPT_ERRORS - 1)
            await logged(pipe.execute(), f"webhook {delivery.id} not settled in Redis")

    def _enqueue(self, delivery: _Delivery) -> None:
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

    async def _send_lane(self, url: str, lane: deque[_Delivery]) -> None:
        try:
            while lane:
                delivery = lane.popleft()
                try:
                    if delivery.attempts == 0 and self._redis is None:
                        await self._keep(delivery)
                    async with self._slots:
                        await self._attempt(delivery)
                except Exception:  # one bad delivery never stops the others
                    logger.exception("webhook delivery %s", delivery.id)
                finally:
                    self._held.discard(delivery.id)
        finally:
            del self._lanes[url]  # idle (or stopped): the URL's next delivery opens a new lane

    async def _attempt(self, delivery: _Delivery) -> None:
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
            await self._settle(delivery, "delivered")
            return
        delivery.last_error = error
        if delivery.attempts > RETRIES:
            self.results["failed"] += 1
            self.failures = [*self.failures, self._failure(delivery)][-KEPT_ERRORS:]
            logger.warning("webhook %s to %s failed %d times: %s", delivery.id, delivery.url, delivery.attempts, error)
            await self._settle(delivery, "failed")
            return
        self.results["retried"] += 1
        delay_s = self._backoff_s * 2 ** (delivery.attempts - 1) * random.uniform(0.5, 1.0)
        if self._redis is not None:
            await self._share(delivery, delay_s)  # due again then, for whichever instance claims it
            return
        await self._settle(delivery, "pending")
        delivery.timer = asyncio.get_running_loop().call_later(delay_s, self._again, delivery)
        self._waiting.add(delivery.timer)

    def _again(self, delivery: _Delivery) -> None:
        if delivery.timer is not None:
            self._waiting.discard(delivery.timer)
        self._enqueue(delivery)

    def _failure(self, delivery: _Delivery) -> dict[str, Any]:
        return {
            "delivery_id": delivery.id,
            "line": delivery.line,
            "event": delivery.event,
            "url": delivery.url,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
            "failed_at": time.time(),
        }

    async def _keep(self, delivery: _Delivery) -> None:
        if self._db is None:
            return
        await self._db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, line, event, url, secret, body, attempts, status, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 'pending', ?)",
            (delivery.id, delivery.line, delivery.event, delivery.url, delivery.secret, delivery.body, time.time()),
        )
        await self._db.commit()

    async def _settle(self, delivery: _Delivery, status: str) -> None:
        if self._redis is not None and status != "pending":
            await self._settle_shared(delivery, status)
        if self._db is None:
            return
        await self._db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_error = ? WHERE id = ?",
            (status, delivery.attempts, delivery.last_error, delivery.id),
        )
        await self._db.commit()
