"""Where the webhooks' outbox keeps a delivery before and between its attempts, so a restart loses
none: a row in the request log's SQLite file, in this process (here), or Redis, when instances
share the outbox (shared.py). The outbox (outbox.py) picks one and sends from its lanes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite

from ..requestlog import migrate

KEPT_ERRORS = 100  # failed deliveries listed by callback_errors


@dataclass(slots=True)
class Delivery:
    id: str
    line: str
    event: str
    url: str
    secret: str
    body: bytes
    attempts: int = 0
    last_error: str | None = None
    timer: asyncio.TimerHandle | None = None  # the wait before its next attempt

    def failure(self) -> dict[str, Any]:
        """What callback_errors lists of a delivery given up."""
        return {
            "delivery_id": self.id,
            "line": self.line,
            "event": self.event,
            "url": self.url,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "failed_at": time.time(),
        }


class Keeping(Protocol):
    """Each is built with the outbox's ``enqueue``: a delivery to send now, in its URL's lane."""

    @property
    def waiting(self) -> int:
        """Deliveries waiting here for their next attempt (not in a lane)."""

    async def open(self) -> None:
        """Start: what was kept before (or by other instances) goes to the lanes."""

    async def stop_taking(self) -> None:
        """At close, before the lanes stop: no delivery reaches a lane from here on."""

    async def close(self) -> None: ...

    def post(self, delivery: Delivery) -> None:
        """A new delivery (never waits): kept, then sent."""

    async def before_first_attempt(self, delivery: Delivery) -> None: ...

    async def again_later(self, delivery: Delivery, delay_s: float) -> None:
        """A failed attempt: the delivery is tried again in ``delay_s``."""

    async def settle(self, delivery: Delivery, status: str) -> None:
        """It ended ``delivered`` or ``failed``."""

    async def failed(self, here: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The deliveries given up, newest last; ``here``: this process's."""


class LocalKeeping:
    """This process's outbox: a row in the SQLite file (``db_path``; none when it is empty), written
    before the first attempt; rows still pending at a restart are sent then."""

    def __init__(self, db_path: str, enqueue: Callable[[Delivery], None]) -> None:
        self._db_path = db_path
        self._enqueue = enqueue
        self._db: aiosqlite.Connection | None = None
        self._waiting: set[asyncio.TimerHandle] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def open(self) -> None:
        if not self._db_path:
            return
        self._db = await aiosqlite.connect(self._db_path)
        await self._db.execute("PRAGMA busy_timeout=5000")
        await migrate(self._db)
        rows = await self._db.execute_fetchall(
            "SELECT id, line, event, url, secret, body, attempts FROM webhook_deliveries "
            "WHERE status = 'pending' ORDER BY created_at"
        )
        for row in rows:  # left by the last run: sent now
            delivery_id, line, event, url, secret, body, attempts = row
            self._enqueue(Delivery(delivery_id, line, event, url, secret, bytes(body), attempts))

    async def stop_taking(self) -> None:
        for timer in self._waiting:  # their rows stay pending: sent at the next start
            timer.cancel()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()

    def post(self, delivery: Delivery) -> None:
        self._enqueue(delivery)

    async def before_first_attempt(self, delivery: Delivery) -> None:
        if self._db is None:
            return
        await self._db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, line, event, url, secret, body, attempts, status, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 'pending', ?)",
            (delivery.id, delivery.line, delivery.event, delivery.url, delivery.secret, delivery.body, time.time()),
        )
        await self._db.commit()

    async def again_later(self, delivery: Delivery, delay_s: float) -> None:
        await self.settle(delivery, "pending")
        delivery.timer = asyncio.get_running_loop().call_later(delay_s, self._again, delivery)
        self._waiting.add(delivery.timer)

    def _again(self, delivery: Delivery) -> None:
        if delivery.timer is not None:
            self._waiting.discard(delivery.timer)
        self._enqueue(delivery)

    async def settle(self, delivery: Delivery, status: str) -> None:
        if self._db is None:
            return
        await self._db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_error = ? WHERE id = ?",
            (status, delivery.attempts, delivery.last_error, delivery.id),
        )
        await self._db.commit()

    async def failed(self, here: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(here)
