"""Pacing: upstream calls start at least ``interval_s`` apart, whoever makes them.

Usage::

    limiter = PacingLimiter(interval_s=10)
    async with limiter:          # returns when this caller may start
        await call_upstream()    # the next caller may start 10 s after this one did

Invariants: starts are granted in the order callers arrived (FIFO, through
``asyncio.Lock``'s fair queue); a caller cancelled while waiting leaves the
queue and consumes no start; time is read from the event loop's clock; a hold
(an upstream's Retry-After) lasts at most ``max_hold_s`` and is always finite.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class PacingLimiter:
    def __init__(self, interval_s: float, *, max_hold_s: float = 120.0) -> None:
        if not 0 <= interval_s < math.inf:
            raise ValueError("interval_s must be >= 0 and finite")
        if not 0 <= max_hold_s < math.inf:
            raise ValueError("max_hold_s must be >= 0 and finite")
        self.interval_s = interval_s
        self.max_hold_s = max_hold_s
        self._lock = asyncio.Lock()
        self._next_start = float("-inf")  # loop time before which nobody may start
        self._held_until = float("-inf")  # loop time until which a hold_until() holds every start
        self.starts = 0

    def __repr__(self) -> str:
        return (
            f"PacingLimiter(interval_s={self.interval_s}, starts={self.starts}, waiting={self.waiting}, "
            f"held_s={self.held_s():.1f})"
        )

    @property
    def waiting(self) -> int:
        waiters = getattr(self._lock, "_waiters", None)
        return len(waiters) if waiters else 0

    def delay_s(self) -> float:
        """Seconds until the next start could be granted (0 if now)."""
        return max(0.0, self._next_start - asyncio.get_running_loop().time())

    def held_s(self) -> float:
        """Seconds a hold (:meth:`hold_until`) still keeps every start back (0 if none)."""
        return max(0.0, self._held_until - asyncio.get_running_loop().time())

    def hold_until(self, delay_s: float) -> None:
        """Grant no start for ``delay_s`` seconds (e.g. an upstream's Retry-After), at most
        ``max_hold_s``: an upstream asking for hours (or for ``inf``) must not stop the line."""
        if math.isnan(delay_s) or delay_s <= 0:
            return
        until = asyncio.get_running_loop().time() + min(delay_s, self.max_hold_s)
        self._held_until = max(self._held_until, until)
        self._next_start = max(self._next_start, until)

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
