"""The waiting line: a bounded FIFO of flights (upstream calls) not started yet.

Workers take flights through an ``asyncio.Queue`` (the hand-off); a flight
stays *in line* until it really starts, so a flight a worker holds while the
pacing limiter makes it wait still counts as position 1. Flights may leave
from anywhere in the line. Guests riding a flight share its position.

Positions are exact at every moment: reading one after a change first
re-numbers the line. Re-numbering is one pass over the line per batch of
changes, never a pass per waiter, and only flights whose position moved are
reported to ``on_moved``. A change is reported at once after a quiet spell;
under churn (a fast upstream and a long line) reports come at most every
``MIN_REPORT_GAP_S``, since each report reaches every waiter.

The line is an interface (admit / leave / next / started / position) so a
shared implementation, e.g. on Redis, can replace this in-memory default.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from .errors import LineFull
from .tickets import Flight

MIN_REPORT_GAP_S = 0.1


class _Handoff(asyncio.Queue[Flight]):
    """An asyncio.Queue whose items can be removed from the middle (O(1))."""

    def _init(self, maxsize: int) -> None:
        self._queue: OrderedDict[str, Flight] = OrderedDict()

    def _put(self, flight: Flight) -> None:
        self._queue[flight.id] = flight

    def _get(self) -> Flight:
        return self._queue.popitem(last=False)[1]

    def discard(self, flight: Flight) -> None:
        self._queue.pop(flight.id, None)


class WaitingLine:
    """In-memory FIFO line. ``on_moved`` hears the flights whose place changed."""

    def __init__(self, max_size: int, on_moved: Callable[[list[Flight]], None] | None = None) -> None:
        self.max_size = max_size
        self._on_moved = on_moved
        self._handoff = _Handoff(max_size)
        # Every flight not yet started, in admission order, including those a
        # worker already holds while it waits for the pacing limiter.
        self._waiting: OrderedDict[str, Flight] = OrderedDict()
        self._renumber_scheduled = False
        self._dirty = False
        self._last_report = float("-inf")

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, flight: Flight) -> bool:
        return flight.id in self._waiting

    def admit(self, flight: Flight) -> None:
        if len(self._waiting) >= self.max_size:
            raise LineFull("The line is full. Please try again in a little while.")
        if self._dirty:
            self._refresh()
        # Joining at the back moves nobody else.
        self._waiting[flight.id] = flight
        flight.position = len(self._waiting)
        self._handoff.put_nowait(flight)

    def leave(self, flight: Flight) -> bool:
        """Take a flight out of line wherever it stands; False if it was not in line."""
        if self._waiting.pop(flight.id, None) is None:
            return False
        self._handoff.discard(flight)
        self._mark_dirty()
        return True

    async def next(self) -> Flight:
        """The flight at the front that no worker holds yet (waits for one)."""
        return await self._handoff.get()

    def started(self, flight: Flight) -> None:
        """The flight leaves the line because its processing begins."""
        self.leave(flight)

    def position(self, flight: Flight) -> int:
        """1 = next to start; 0 = not in line."""
        if self._dirty:
            self._refresh()
        return flight.position if flight.id in self._waiting else 0

    def flights(self) -> list[Flight]:
        if self._dirty:
            self._refresh()
        return list(self._waiting.values())

    def _mark_dirty(self) -> None:
        self._dirty = True
        if not self._renumber_scheduled:
            self._renumber_scheduled = True
            loop = asyncio.get_running_loop()
            wait_s = self._last_report + MIN_REPORT_GAP_S - loop.time()
            if wait_s > 0:
                loop.call_later(wait_s, self._scheduled_refresh)
            else:
                loop.call_soon(self._scheduled_refresh)

    def _scheduled_refresh(self) -> None:
        self._renumber_scheduled = False
        if self._dirty:
            self._refresh()

    def _refresh(self) -> None:
        self._dirty = False
        moved = []
        for number, flight in enumerate(self._waiting.values(), start=1):
            if flight.position != number:
                flight.position = number
                moved.append(flight)
        if moved and self._on_moved is not None:
            self._last_report = asyncio.get_running_loop().time()
            self._on_moved(moved)
