"""Where every waiting guest stands: one view of the line per tick, reports, and wait estimates.

Each tick takes ONE :class:`~guestqueue.lines.base.LineView` of the whole line
(for a shared line: one Redis round trip per instance, however many guests
wait) and tells this instance's waiting guests their place, total ahead, line
size and estimated wait. Between ticks, a line that reports moves (the memory
line does, throttled) gets the moved flights' guests told at once.

The estimate is computed from the same view (running calls, pacing delay), so
every number in one ``queued`` event comes from one moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from . import clock
from .config import Settings
from .errors import LineUnavailable
from .eta import WaitEstimator
from .events import QUEUED, Place
from .lines.base import Line, LineView
from .stopping import raise_if_cancelled, stop_tasks
from .tickets import Flight, Ticket

MIN_KICK_GAP_S = 0.1  # under a stream of higher-tier arrivals, at most ten extra rounds a second


class Positions:
    def __init__(
        self,
        settings: Settings,
        line: Line,
        waiting: Mapping[str, Flight],
        *,
        notice: Callable[[], dict[str, Any]] = dict,
        release_per_minute: int = 0,
        on_tick: list[Callable[[], None]] | None = None,
    ) -> None:
        """``waiting``: this instance's flights still in line (flights.py); ``notice``: what every
        ``queued`` event adds (the line's mode and message while it is not open); ``on_tick``:
        housekeeping run once per tick. ``on_view`` (run after each tick's view is taken) is filled
        before :meth:`start` by whoever follows the views (runtime.py)."""
        self._settings = settings
        self._line = line
        self._waiting = waiting
        # A pull line's flight holds its slot while its job waits for a worker; until one takes it,
        # its guests go on hearing they are first in line (rather than nothing).
        self._awaits_worker = settings.resolved_upstream_kind == "pull"
        self.view = LineView({}, max_concurrent=settings.max_concurrent_requests)
        self._view_mono = clock.monotonic()
        self._view_asked = float("-inf")  # when the view was asked for (not known: -inf)
        self._started_since_view: list[float] = []  # starts heard of after the view was taken (monotonic)
        self._notice = notice
        self.estimator = WaitEstimator(
            settings.max_concurrent_requests, _pace_s(settings, release_per_minute), self._eta_snapshot
        )
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Future[bool] | None = None  # the tick's sleep, ended by a kick
        self._kicked = False
        self._last_kick = float("-inf")
        self._on_tick = list(on_tick or [])
        self.on_view: list[Callable[[], None]] = []  # run after each tick's view is taken

    def reconfigure(self, settings: Settings, release_per_minute: int) -> None:
        self._settings = settings
        self.estimator.concurrency = settings.max_concurrent_requests
        self.estimator.interval_s = _pace_s(settings, release_per_minute)
        self.view = replace(self.view, max_concurrent=settings.max_concurrent_requests)
        self.estimator.invalidate()

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="guestqueue-positions")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])

    async def refresh(self) -> LineView:
        """A new view of the line (the estimates follow it)."""
        asked = clock.monotonic()
        self.view = await self._line.view()
        self._view_mono, self._view_asked = clock.monotonic(), asked
        self._started_since_view.clear()
        self.estimator.invalidate()
        return self.view

    def use(self, view: LineView) -> None:
        """A view taken by someone else (e.g. at admission) is the newest one."""
        self.view, self._view_mono, self._view_asked = view, clock.monotonic(), float("-inf")
        self._started_since_view.clear()
        self.estimator.invalidate()

    def started(self) -> None:
        """A call just started: until the next view, estimates count its slot and the pacing turn it
        took (a guest who asks right after hears the pacing wait at once, not 0 then 9 s)."""
        self._started_since_view.append(clock.monotonic())
        self.estimator.invalidate()

    def kick(self) -> None:
        """The line was reordered (a higher tier joined ahead): a round now, not at the next tick."""
        if self._kick is not None:
            _settle(self._kick, False)
        else:
            self._kicked = True  # during a round, or while the last kick's gap runs

    async def _sleep_until(self, due: float) -> bool:
        """Until loop time ``due`` (True), or a kick (False; at most one per ``MIN_KICK_GAP_S``).
        A future and a timer, not wait_for (which can swallow a cancel on Python 3.11)."""
        loop = asyncio.get_running_loop()
        gap_s = self._last_kick + MIN_KICK_GAP_S - loop.time()
        if gap_s > 0:
            await asyncio.sleep(min(gap_s, max(0.0, due - loop.time())))
        if loop.time() >= due:
            return True
        if not self._kicked:
            self._kick = loop.create_future()
            timer = loop.call_at(due, _settle, self._kick, True)
            try:
                if await self._kick:
                    return True
            finally:
                timer.cancel()
                self._kick = None
        self._kicked = False
        self._last_kick = loop.time()
        return False

    def _eta_snapshot(self) -> tuple[list[float], float]:
        fresh = self._line.peek()
        if fresh is not self.view:  # a line in this process knows its running calls exactly, now
            return list(fresh.running_s), fresh.next_start_s
        now = clock.monotonic()
        aged = now - self._view_mono  # the view's clock has moved on since
        view = self.view
        running = [s + aged for s in view.running_s] + [now - began for began in self._started_since_view]
        next_start_s = max(0.0, view.next_start_s - aged)
        if self._started_since_view:
            next_start_s = max(next_start_s, self._started_since_view[-1] + self.estimator.interval_s - now)
        return running, next_start_s

    def retry_after_s(self, position: int) -> float:
        return self.estimator.estimate_s(position)

    def range_s(self, position: int) -> tuple[float, float]:
        return self.estimator.range_s(position)

    def tell(self, ticket: Ticket, position: int) -> None:
        """Publish ``ticket``'s place in line (the first one told is its predicted wait)."""
        estimator = self.estimator
        wait_s = estimator.estimate_s(position)
        low, high = estimator.range_s(position)
        if ticket.predicted is None:
            ticket.predicted = (wait_s, low, high)
        place: Place = {
            "request_id": ticket.id,
            "queue_position": position,
            "total_ahead": position - 1,
            "queue_size": max(self.view.size, position),
            "estimated_wait_sec": round(wait_s, 1),
            "estimated_wait_range_sec": (round(low, 1), round(high, 1)),
        }
        notice = self._notice()
        if notice:  # a line not open: its mode and message too
            ticket.events.publish(QUEUED, {**place, **notice})
        else:
            ticket.events.publish_place(place)

    def report(self, flights: Iterable[Flight]) -> None:
        """Tell the guests of ``flights`` their place in the current view."""
        view = self.view
        for flight in flights:
            position = view.position(flight.id)
            if position <= 0 and self._awaits_worker and flight.joined_mono < self._view_asked:
                position = 1  # in line before the view, out of it now: started, its job not taken yet
            if position <= 0:
                continue  # started or left since the view; its guests hear that instead
            flight.position = flight.reported_position = position
            for ticket in flight.tickets:
                self.tell(ticket, position)

    def moved(self, flights: list[Flight]) -> None:
        """The line says these flights moved (the memory line, between ticks): tell them now."""
        self.estimator.invalidate()
        for flight in flights:
            for ticket in flight.tickets:
                self.tell(ticket, flight.position)

    async def _tick(self) -> None:
        """Every waiting guest hears its place at least every ``position_update_s``."""
        loop = asyncio.get_running_loop()
        interval_s = self._settings.position_update_s
        due = loop.time() + interval_s
        while True:
            # A fixed cadence: sleeping a full interval after each round would let the
            # round's own duration (~0.15 s at 10 000 guests) stretch every gap past it.
            # A kick (the line reordered) runs a round at once, keeping the cadence.
            if await self._sleep_until(due):
                due = max(due + interval_s, loop.time())
            for housekeeping in self._on_tick:
                housekeeping()
            try:
                await self.refresh()
            except LineUnavailable:  # Redis is unreachable: guests keep their last place
                raise_if_cancelled()
                continue
            self.report(list(self._waiting.values()))
            for follow_up in self.on_view:
                follow_up()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _pace_s(settings: Settings, release_per_minute: int) -> float:
    """Over many starts, a release rate paces like an interval of 60 s / rate."""
    return max(settings.upstream_interval_s, 60.0 / release_per_minute if release_per_minute else 0.0)
