"""The waiting line: a bounded FIFO of flights (upstream calls) not started yet.

Workers take flights through an ``asyncio.Queue`` (the hand-off); a flight
stays *in line* until it really starts, so a flight a worker holds while the
pacing limiter makes it wait still counts as position 1. Flights may leave
from anywhere in the line. Guests riding a flight share its position.

Positions are exact at every moment, and reading them never broadcasts:
a read after a change first re-numbers the line silently (one pass per batch
of changes, never a pass per waiter). Telling guests is a separate, throttled
step: a report hands ``on_moved`` the flights whose position differs from the
one they last heard. A change is reported at once after a quiet spell; under
churn (a fast upstream and a long line) reports come at most every
``MIN_REPORT_GAP_S``, since each report reaches every waiter. Joining at the
back needs neither: the newcomer's place is the line's length.

The size limit counts guests *waiting*: flights that a free slot will start
right now (``startable_now``, e.g. idle workers after a burst) are in line
for a moment but are not refused room.

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

    def __init__(
        self,
        max_size: int,
        on_moved: Callable[[list[Flight]], None] | None = None,
        *,
        startable_now: Callable[[], int] = lambda: 0,
    ) -> None:
        self.max_size = max_size
        self._on_moved = on_moved
        self._startable_now = startable_now
        self._handoff = _Handoff()  # unbounded: admit() enforces the limit
        # Every flight not yet started, in admission order, including those a
        # worker already holds while it waits for the pacing limiter.
        self._waiting: OrderedDict[str, Flight] = OrderedDict()
        self._report_scheduled = False
        self._dirty = False  # positions need renumbering
        self._unreported = False  # some guest has not heard its current position
        self._last_report = float("-inf")

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, flight: Flight) -> bool:
        return flight.id in self._waiting

    def admit(self, flight: Flight) -> None:
        """Join at the back (the caller tells the newcomer its place), or raise LineFull."""
        waiting = len(self._waiting) - min(len(self._waiting), self._startable_now())
        if waiting >= self.max_size:
            raise LineFull("The line is full. Please try again in a little while.")
        # Joining at the back moves nobody else, and the newcomer's place is exact without
        # renumbering the others.
        self._waiting[flight.id] = flight
        flight.position = flight.reported_position = len(self._waiting)
        self._handoff.put_nowait(flight)

    def leave(self, flight: Flight) -> bool:
        """Take a flight out of line wherever it stands; False if it was not in line."""
        if self._waiting.pop(flight.id, None) is None:
            return False
        self._handoff.discard(flight)
        self._dirty = self._unreported = True
        self._schedule_report()
        return True

    async def next(self) -> Flight:
        """The flight at the front that no worker holds yet (waits for one)."""
        return await self._handoff.get()

    def started(self, flight: Flight) -> None:
        """The flight leaves the line because its processing begins."""
        self.leave(flight)

    def position(self, flight: Flight) -> int:
        """1 = next to start; 0 = not in line. Exact, and tells nobody."""
        self._renumber()
        return flight.position if flight.id in self._waiting else 0

    def flights(self) -> list[Flight]:
        """The line in order, positions exact; tells nobody (the caller may)."""
        self._renumber()
        return list(self._waiting.values())

    def mark_reported(self, flights: list[Flight]) -> None:
        """The caller told these flights' guests their current positions."""
        for flight in flights:
            flight.reported_position = flight.position

    def _schedule_report(self) -> None:
        if self._report_scheduled:
            return
        self._report_scheduled = True
        loop = asyncio.get_running_loop()
        wait_s = self._last_report + MIN_REPORT_GAP_S - loop.time()
        if wait_s > 0:
            loop.call_later(wait_s, self._report)
        else:
            loop.call_soon(self._report)

    def _renumber(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        for number, flight in enumerate(self._waiting.values(), start=1):
            flight.position = number

    def _report(self) -> None:
        """Tell ``on_moved`` the flights whose guests last heard another position than their own."""
        self._report_scheduled = False
        if not self._unreported:
            return
        self._unreported = False
        self._renumber()
        moved = [flight for flight in self._waiting.values() if flight.reported_position != flight.position]
        if moved and self._on_moved is not None:
            self._last_report = asyncio.get_running_loop().time()
            self._on_moved(moved)
        self.mark_reported(moved)
