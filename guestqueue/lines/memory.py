"""The in-process line: a bounded FIFO of flights (upstream calls) not started yet, and the
pacing limiter that starts them (the default, for a single process; lines/base.py has
the interface and its invariants, lines/redis/line.py the line shared by several processes).

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

Priority tiers: the line is sorted by (rank, number), rank 0 being the highest
tier, so it is FIFO within a tier (and plain FIFO without tiers). A flight of a
lower tier that waited ``max_starvation_s`` is promoted to rank 0 at its own
number (:meth:`MemoryLine.promote`, run before every hand-out and view): nobody
waits longer than that behind higher-tier guests who came after it. A
higher-tier flight joining ahead of others moves them, and they hear it at once.

The size limit counts guests *waiting*: flights that a free slot will start
right now (``startable_now``, e.g. idle workers after a burst) are in line
for a moment but are not refused room.

Starting is two steps here (one process sees the whole line, so its front is
the global front): :meth:`MemoryLine.next` hands a worker the front flight, and
:meth:`MemoryLine.start` waits for a slot and the limiter's turn; a flight held
meanwhile is still position 1, and cancelling the wait consumes no start.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence

from sortedcontainers import SortedKeyList

from ..errors import LineFull
from ..fairness import FairOrder, Shares
from ..limiter import PacingLimiter
from ..tickets import Flight
from .base import Joiner, LineView

MIN_REPORT_GAP_S = 0.1
HELD_POLL_S = 0.2  # a paused line's workers look again this often (a mode or a scheduled window)


class _Handoff(asyncio.Queue[Flight]):
    """An asyncio.Queue of the flights no worker holds, handed out in the line's order (the
    front-most first, whatever order they were put in); removable from the middle."""

    def __init__(self, line: MemoryLine) -> None:
        self._line = line
        super().__init__()

    def _init(self, maxsize: int) -> None:
        self._queue: dict[str, Flight] = {}

    def _put(self, flight: Flight) -> None:
        self._queue[flight.id] = flight

    def _get(self) -> Flight:
        self._line.promote()
        # The line's front-most flight no worker holds: workers hold at most a few, so this
        # looks at a few flights whatever the line's length.
        for flight in self._line._order:
            if flight.id in self._queue:
                return self._queue.pop(flight.id)
        raise AssertionError("a flight to hand out is not in line")

    def discard(self, flight: Flight) -> None:
        self._queue.pop(flight.id, None)

    def return_front(self, flight: Flight) -> None:
        """A worker let go of ``flight`` before starting it: the next worker takes it first (it
        is still the front-most)."""
        self.put_nowait(flight)


class MemoryLine:
    """In-memory FIFO line and pacer (lines/base.py's Line and Pacer). ``on_moved`` hears the
    flights whose place changed."""

    def __init__(
        self,
        *,
        max_size: int,
        max_concurrent: int,
        interval_s: float,
        max_hold_s: float = 120.0,
        release_per_minute: int = 0,
        max_starvation_s: float = 120.0,
        on_moved: Callable[[list[Flight]], None] | None = None,
        starts_allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        """``starts_allowed``: the line's mode (gate.py): no start while it says no."""
        self.max_size = max_size
        self.max_concurrent = max_concurrent
        self.interval_s = interval_s
        self.limiter = PacingLimiter(interval_s, max_hold_s=max_hold_s, release_per_minute=release_per_minute)
        self.starts_allowed = starts_allowed
        self._slots = asyncio.Semaphore(max_concurrent)
        self._retired: set[asyncio.Task[bool]] = set()  # slots taken out of use by a smaller max_concurrent
        self._running: dict[str, float] = {}  # flight id -> loop time it started
        self.on_moved = on_moved
        self._handoff = _Handoff(self)  # unbounded: admit() enforces the limit
        # Every flight not yet started, including those a worker already holds while it waits for
        # the pacing limiter: by id, and in start order (tier, then admission; see promote()).
        self._waiting: dict[str, Flight] = {}
        self._order: SortedKeyList[Flight] = SortedKeyList(key=_order_key)
        self._numbers = itertools.count(1)
        self.max_starvation_s = max_starvation_s
        self._aging: deque[tuple[float, Flight]] = deque()  # flights of lower tiers, by promotion time
        self.shares = Shares()
        self._fair = FairOrder(self._order)  # a fair line's flights (those with a share): their tags
        self._report_scheduled = False
        self._dirty = False  # positions need renumbering
        self._unreported = False  # some guest has not heard its current position
        self._last_report = float("-inf")

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, flight: Flight) -> bool:
        return flight.id in self._waiting

    def __repr__(self) -> str:
        return f"MemoryLine(waiting={len(self._waiting)}, running={len(self._running)}, {self.limiter!r})"

    # -- Line ----------------------------------------------------------------------

    async def admit(self, flight: Flight, joiner: Joiner | None = None) -> int:
        self.admit_now(flight)
        return flight.position

    async def ahead_of(self, rank: int) -> int:
        self.promote()
        return int(self._order.bisect_key_left((rank + 1, 0)))  # every flight of its tier or a higher one

    async def leave(self, flight: Flight) -> bool:
        return self.leave_now(flight)

    async def start(self, flight: Flight) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            while not self.starts_allowed():  # paused: the flight keeps its place at the front
                await asyncio.sleep(HELD_POLL_S)
            await self._slots.acquire()
            try:
                await self.limiter.acquire()
            except BaseException:
                self._slots.release()
                raise
        except asyncio.CancelledError:
            if flight.id in self._waiting:  # still in line: it must not be lost with this worker
                self._handoff.return_front(flight)
            raise
        self._running[flight.id] = loop.time()
        if flight.share is not None:
            self._fair.started(flight, self.shares.expected)
        self.leave_now(flight)
        return loop.time() - began

    async def finish(self, flight: Flight) -> None:
        if self._running.pop(flight.id, None) is not None:
            self._slots.release()

    async def charge(self, flight: Flight, service: float) -> None:
        if flight.share is None or flight.charged is None:
            return
        self.shares.served(flight.share, service)
        if self._fair.ended(flight, service):
            self._moved()

    async def requeue_front(self, flight: Flight) -> None:
        # One process: a flight stops only when this process does, and its guests with it.
        await self.finish(flight)

    async def rebuild(self, running: list[Flight], waiting: list[Flight], ended: Sequence[str] = ()) -> int:
        return 0  # it lives and dies with its process: nothing to give back

    async def forgetting(self) -> bool:
        return False

    async def view(self) -> LineView:
        return self.view_now()

    def peek(self) -> LineView:
        return self.view_now()

    async def close(self) -> None:
        for task in self._retired:
            task.cancel()

    def reconfigure(
        self,
        *,
        max_size: int,
        max_concurrent: int,
        interval_s: float,
        release_per_minute: int,
        max_starvation_s: float = 120.0,
    ) -> None:
        """New limits, at once (the admin API): running calls finish, waiting flights keep their places."""
        self.max_size, self.interval_s, self.max_starvation_s = max_size, interval_s, max_starvation_s
        self.limiter.interval_s, self.limiter.release_per_minute = interval_s, release_per_minute
        change, self.max_concurrent = max_concurrent - self.max_concurrent, max_concurrent
        for _ in range(change):
            self._slots.release()
        for _ in range(-change):  # a slot retired as soon as it is free (and kept)
            task = asyncio.ensure_future(self._slots.acquire())
            self._retired.add(task)

    # -- Pacer ---------------------------------------------------------------------

    async def hold(self, delay_s: float) -> None:
        self.limiter.hold_until(delay_s)

    async def retry_turn(self) -> float:
        return await self.limiter.acquire(first=True)

    # -- the same, synchronous (one process needs no round trip) -------------------

    def view_now(self) -> LineView:
        self.promote()
        now = asyncio.get_running_loop().time()
        return LineView(
            _Positions(self),
            running_s=tuple(now - started for started in self._running.values()),
            next_start_s=self.limiter.delay_s(),
            held_s=self.limiter.held_s(),
            max_concurrent=self.max_concurrent,
        )

    def admit_now(self, flight: Flight) -> None:
        """Join at the back (the caller tells the newcomer its place), or raise LineFull."""
        startable = self.view_now().startable_now(self.interval_s)
        waiting = len(self._waiting) - min(len(self._waiting), startable)
        if waiting >= self.max_size:
            raise LineFull("The line is full. Please try again in a little while.")
        tag = 0.0 if flight.share is None else self._fair.tag(flight, self.shares.expected)  # FIFO: the number
        flight.order = (flight.rank, tag, next(self._numbers))
        self._waiting[flight.id] = flight
        self._order.add(flight)
        if flight.rank > 0:
            self._aging.append((asyncio.get_running_loop().time() + self.max_starvation_s, flight))
        place = self._order.bisect_key_left(flight.order) + 1
        if place == len(self._order):
            # Joining at the back moves nobody else, and the newcomer's place is exact without
            # renumbering the others.
            flight.position = flight.reported_position = place
        else:  # a higher tier: everyone behind moved back one, and hears it at once
            flight.position = place
            self._moved()
        self._handoff.put_nowait(flight)

    def leave_now(self, flight: Flight) -> bool:
        """Take a flight out of line wherever it stands; False if it was not in line."""
        if self._waiting.pop(flight.id, None) is None:
            return False
        del self._order[self._order.bisect_key_left(flight.order)]
        if flight.share is not None:
            self._fair.left(flight)
        self._handoff.discard(flight)
        self._moved()
        return True

    def promote(self) -> None:
        """Flights of a lower tier that waited ``max_starvation_s`` go to the highest tier at their
        own number: ahead of every higher-tier flight admitted after them."""
        now = asyncio.get_running_loop().time()
        while self._aging and self._aging[0][0] <= now:
            _, flight = self._aging.popleft()
            if flight.id not in self._waiting:
                continue
            place = self._order.bisect_key_left(flight.order)
            del self._order[place]
            flight.order = (0, *flight.order[1:])
            self._order.add(flight)
            if self._order.bisect_key_left(flight.order) != place:  # it passed someone: they moved back
                self._moved()

    def _moved(self) -> None:
        self._dirty = self._unreported = True
        self._schedule_report()

    async def next(self) -> Flight:
        """The flight at the front that no worker holds yet (waits for one)."""
        return await self._handoff.get()

    def position(self, flight: Flight) -> int:
        """1 = next to start; 0 = not in line. Exact, and tells nobody."""
        self._renumber()
        return flight.position if flight.id in self._waiting else 0

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
        for number, flight in enumerate(self._order, start=1):
            flight.position = number

    def _report(self) -> None:
        """Tell ``on_moved`` the flights whose guests last heard another position than their own."""
        self._report_scheduled = False
        if not self._unreported:
            return
        self._unreported = False
        self._renumber()
        moved = [flight for flight in self._order if flight.reported_position != flight.position]
        if moved and self.on_moved is not None:
            self._last_report = asyncio.get_running_loop().time()
            self.on_moved(moved)
        for flight in moved:
            flight.reported_position = flight.position


class _Positions(Mapping[str, int]):
    """A view's positions, read from the line (renumbered once, when first read), not copied."""

    __slots__ = ("_line",)

    def __init__(self, line: MemoryLine) -> None:
        self._line = line

    def __getitem__(self, flight_id: str) -> int:
        flight = self._line._waiting[flight_id]
        self._line._renumber()
        return flight.position

    def __iter__(self) -> Iterator[str]:
        return (flight.id for flight in self._line._order)

    def __len__(self) -> int:
        return len(self._line._waiting)


def _order_key(flight: Flight) -> tuple[int, float, int]:
    return flight.order
