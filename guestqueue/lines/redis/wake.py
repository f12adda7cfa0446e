"""Waking this instance's workers when any instance changes the line.

Waiting workers do not poll: admissions, leaves and finished calls publish on the line's wake
channel; one subscriber per instance wakes its workers, which knock on the start script one at a
time. A short fallback timer (the pacing wait, at most ``MAX_WAKE_WAIT_S``) covers a lost message
or a lease that just expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from .boundary import subscribe

REORDERED = "reordered"  # the wake-up message of a flight that joined ahead of others
MAX_WAKE_WAIT_S = 0.5  # a worker re-knocks at least this often (lost wake-up, expired lease)


class Wake:
    def __init__(self, redis: aioredis.Redis, channel: str) -> None:
        self._redis = redis
        self.channel = channel
        self.woken = asyncio.Event()  # set by a wake-up since a worker last cleared it
        self._nappers: set[asyncio.Future[None]] = set()  # workers waiting for a wake-up (nap)
        # Called when a flight joined ahead of others (a higher tier), here or on another instance.
        self.on_reordered: list[Callable[[], None]] = []

    async def listen(self) -> None:
        """Wake local workers whenever any instance changes the line or frees a slot."""
        await subscribe(self._redis, [self.channel], self._heard, "wake-ups lost")

    def wake_workers(self) -> None:
        self.woken.set()
        for napper in self._nappers:
            _wake(napper)

    async def nap(self, wait_s: float) -> None:
        """Until a wake-up or ``wait_s``: a future and a timer (as aiolimiter's waiters). Not
        wait_for or asyncio.timeout: on Python 3.11 either can swallow a cancel that comes as its
        timeout fires, and a worker would then knock for ever (a stop that never ends)."""
        loop = asyncio.get_running_loop()
        napper = loop.create_future()
        self._nappers.add(napper)
        timer = loop.call_later(wait_s, _wake, napper)
        try:
            await napper
        finally:
            timer.cancel()
            self._nappers.discard(napper)

    async def _heard(self, message: dict[str, Any]) -> None:
        self.wake_workers()
        if message["data"] == REORDERED.encode():
            for hook in self.on_reordered:
                hook()


def _wake(napper: asyncio.Future[None]) -> None:
    if not napper.done():
        napper.set_result(None)
