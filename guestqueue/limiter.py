"""Pacing: upstream calls start at least ``interval_s`` apart, whoever makes them.

Usage::

    limiter = PacingLimiter(interval_s=10)
    async with limiter:          # returns when this caller may start
        await call_upstream()    # the next caller may start 10 s after this one did

Invariants: starts are granted in the order callers arrived (FIFO, through
``asyncio.Lock``'s fair queue); a caller cancelled while waiting leaves the
queue and consumes no start; time is read from the event loop's clock.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class PacingLimiter:
    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self._next_start = float("-inf")  # loop time before which nobody may start
        self.starts = 0

    def __repr__(self) -> str:
        return f"PacingLimiter(interval_s={self.interval_s}, starts={self.starts}, waiting={self.waiting})"

    @property
    def waiting(self) -> int:
        waiters = getattr(self._lock, "_waiters", None)
        return len(waiters) if waiters else 0

    def delay_s(self) -> float:
        """Seconds until the next start could be granted (0 if now)."""
        return max(0.0, self._next_start - asyncio.get_running_loop().time())

    def hold_until(self, delay_s: float) -> None:
        """Grant no start for ``delay_s`` seconds (e.g. an upstream's Retry-After)."""
        self._next_start = max(self._next_start, asyncio.get_running_loop().time() + delay_s)

    async def acquire(self) -> float:
        """Wait for this caller's start; returns the seconds spent waiting."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with self._lock:
            # A loop: hold_until() may push the next start later while we sleep.
            while (delay := self._next_start - loop.time()) > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            self._next_start = now + self.interval_s
            self.starts += 1
            return now - began

    async def __aenter__(self) -> float:
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
