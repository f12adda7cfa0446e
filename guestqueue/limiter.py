"""Pacing: upstream calls start at least ``interval_s`` apart, whoever makes them.

Usage::

    limiter = PacingLimiter(interval_s=10)
    async with limiter:          # returns when this caller may start
        await call_upstream()    # the next caller may start 10 s after this one did
    await limiter.acquire(first=True)   # a retry of a call that already holds a worker slot

Invariants: starts are granted in the order callers arrived (FIFO), except
that callers asking ``first`` (retries: their flight already waited its turn
and holds a slot) are served before everyone else, FIFO among themselves; a
caller cancelled while waiting leaves the queue and consumes no start; waiters
are futures woken by one timer, at the next start time, so nobody sleeps
holding a lock; time is read from the event loop's clock; a hold (an
upstream's Retry-After) lasts at most ``max_hold_s`` and is always finite; with
``release_per_minute`` (seed 001's rate-controlled release), no 60-second window
holds more starts than that, on top of the interval.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import TracebackType

RELEASE_WINDOW_S = 60.0


class PacingLimiter:
    __slots__ = (
        "_first",
        "_held_until",
        "_next_start",
        "_releases",
        "_timer",
        "_waiters",
        "interval_s",
        "max_hold_s",
        "release_per_minute",
        "starts",
    )

    def __init__(self, interval_s: float, *, max_hold_s: float = 120.0, release_per_minute: int = 0) -> None:
        if not 0 <= interval_s < math.inf:
            raise ValueError("interval_s must be >= 0 and finite")
        if not 0 <= max_hold_s < math.inf:
            raise ValueError("max_hold_s must be >= 0 and finite")
        self.interval_s = interval_s
        self.max_hold_s = max_hold_s
        self._next_start = float("-inf")  # loop time before which nobody may start
        self._held_until = float("-inf")  # loop time until which a hold_until() holds every start
        # Each waiter's future gets, when granted, the _next_start it replaced (to undo a start
        # granted to a caller cancelled before it could use it).
        self._first: deque[asyncio.Future[float]] = deque()
        self._waiters: deque[asyncio.Future[float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.release_per_minute = release_per_minute
        self._releases: deque[float] = deque()  # loop times of the starts of the last minute
        self.starts = 0

    def __repr__(self) -> str:
        return (
            f"PacingLimiter(interval_s={self.interval_s}, starts={self.starts}, waiting={self.waiting}, "
            f"held_s={self.held_s():.1f})"
        )

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._first) + sum(not f.done() for f in self._waiters)

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

    async def acquire(self, *, first: bool = False) -> float:
        """Wait for this caller's start; returns the seconds spent waiting. ``first``: before every
        caller not asking ``first`` (a retry of a flight that already holds a slot)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        if not self._first and not self._waiters and self._next_start <= began:
            self._grant(began)
            return 0.0
        future: asyncio.Future[float] = loop.create_future()
        (self._first if first else self._waiters).append(future)
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._undo(future.result())  # granted, but the caller is gone: the start is not used
            elif future in (queue := self._first if first else self._waiters):  # _wake may have dropped it
                queue.remove(future)
            self._wake()
            raise
        return loop.time() - began

    def _grant(self, now: float) -> float:
        replaced, self._next_start = self._next_start, now + self.interval_s
        if self.release_per_minute > 0:
            releases = self._releases
            releases.append(now)
            while releases[0] <= now - RELEASE_WINDOW_S:
                releases.popleft()
            if len(releases) >= self.release_per_minute:  # a full minute's worth: the oldest ages out first
                self._next_start = max(self._next_start, releases[-self.release_per_minute] + RELEASE_WINDOW_S)
        self.starts += 1
        return replaced

    def _undo(self, replaced: float) -> None:
        self.starts -= 1
        if self._releases:
            self._releases.pop()
        self._next_start = max(replaced, self._held_until)

    def _wake(self) -> None:
        """Grant every start that is due (the ``first`` queue before the rest), then set one timer
        for the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while queue := (self._first or self._waiters):
            future = queue[0]
            if future.done():  # cancelled while waiting
                queue.popleft()
                continue
            now = loop.time()
            if self._next_start > now:
                self._timer = loop.call_at(self._next_start, self._wake)
                return
            queue.popleft()
            future.set_result(self._grant(now))

    async def __aenter__(self) -> float:
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
