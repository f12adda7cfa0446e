"""The running line: its parts, put together once, and its lifecycle.

A :class:`QueueService` is built in the app's lifespan (runtime.py) from a :class:`~guestqueue.core.Core`
(what every part shares) and everything it waits for at shutdown, all given at construction. Its
parts own the steps: joining.py admits, endings.py ends each request exactly once (and is the
workers' sink), attendance.py follows the guests' streams and timers, handover.py moves guests
between instances of a shared line. Nothing lives in module globals, so two apps can run side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from . import clock
from .attendance import Attendance, OpenStream
from .config import Settings
from .core import Core
from .endings import SHUTDOWN_MESSAGE, Endings
from .gate import Gate
from .handover import Handover
from .joining import Joining
from .lines.base import Line, Pacer, Places, Tally
from .linespec import LineSpec
from .positions import Positions
from .registry import Registry
from .stats import Stats
from .stopping import stop_tasks
from .tickets import Flight, Status, Ticket


class QueueService:
    def __init__(
        self,
        core: Core,
        endings: Endings,
        attendance: Attendance,
        handover: Handover,
        *,
        tally: Tally | None = None,
        upstream_kind: str = "custom",
        on_drain: Sequence[Callable[[], None]] = (),
        busy: Sequence[Callable[[], bool]] = (),
        health_checks: Sequence[Callable[[], list[str]]] = (),
    ) -> None:
        """``on_drain``: run when shutdown begins (the workers take no new flight); ``busy``: other
        work the shutdown grace waits for; ``health_checks``: problems the other parts see."""
        self.core = core
        self.endings = endings
        self.attendance = attendance
        self.handover = handover
        self.joining = Joining(core, endings, attendance, handover)
        # Admit a request, or raise Rejected: joining.py's door itself, so its signature is written once.
        self.submit = self.joining.submit
        self.tally = tally  # a shared line's totals and recent requests (None: ours are all there is)
        self.upstream_kind = upstream_kind
        self.health_checks = tuple(health_checks)
        self._on_drain = tuple(on_drain)
        self._busy = tuple(busy)
        self._watcher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        flights = self.core.flights
        return (
            f"QueueService(queued={len(flights.waiting)}, active={len(flights.running)}, "
            f"total={self.stats.total_requests}, line={self.line!r})"
        )

    # -- what the other layers read ------------------------------------------------------

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def spec(self) -> LineSpec:
        return self.core.gate.spec

    @property
    def gate(self) -> Gate:
        return self.core.gate

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def line(self) -> Line:
        return self.core.line

    @property
    def pacer(self) -> Pacer:
        return self.core.pacer

    @property
    def places(self) -> Places:
        return self.core.places

    @property
    def positions(self) -> Positions:
        return self.core.positions

    @property
    def registry(self) -> Registry:
        return self.core.registry

    @property
    def stats(self) -> Stats:
        return self.core.stats

    @property
    def waiting(self) -> dict[str, Flight]:
        return self.core.flights.waiting

    @property
    def running(self) -> dict[str, Flight]:
        return self.core.flights.running

    @property
    def streams(self) -> set[OpenStream]:
        return self.attendance.streams

    @property
    def accepting(self) -> bool:
        return self.joining.accepting

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.core.positions.start()
        self._watcher = asyncio.create_task(self.attendance.watch_streams(), name="guestqueue-streams")

    def reconfigure(self, spec: LineSpec) -> None:
        """The line's new spec (the admin API), at once: its mode and policy, limits and pacing.
        A purge in it sends away the guests who joined before it."""
        core = self.core
        purged = spec.purged_at > core.gate.spec.purged_at
        core.gate.spec = spec
        if purged:
            self.endings.purge(spec.purged_at)
        settings = spec.settings
        core.positions.reconfigure(settings, spec.release_per_minute)
        core.line.reconfigure(
            max_size=settings.max_queue_size,
            max_concurrent=settings.max_concurrent_requests,
            interval_s=settings.upstream_interval_s,
            release_per_minute=spec.release_per_minute,
            max_starvation_s=spec.max_starvation_s,
        )

    def begin_shutdown(self) -> None:
        """Stop admitting now and drain in the background (see :meth:`stop`)."""
        self.joining.accepting = False
        self.core.status.notify()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def stop(self) -> None:
        """Refuse new guests, end those still in line, let running work finish for the shutdown grace,
        then end everything else. Every guest gets exactly one terminal event."""
        self.begin_shutdown()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        core = self.core
        deadline = clock.monotonic() + core.settings.shutdown_grace_s
        for drain in self._on_drain:
            drain()
        # Guests still waiting will not be served by this process: with a shared line they keep
        # their places and resume on another instance; alone, they hear it is over.
        for flight in list(core.flights.waiting.values()):
            self._leave_at_stop(flight)
        # Running calls get the grace: our guests' (wherever they run) and, with a shared line, the
        # calls this instance runs for other instances' guests.
        while (core.flights.running or any(busy() for busy in self._busy)) and clock.monotonic() < deadline:
            await asyncio.sleep(0.05)
        jobs = [flight.job for flight in core.flights.running.values() if flight.job is not None]
        for flight in list(core.flights.running.values()):
            self._leave_at_stop(flight)  # shared: its call goes on (or is retried) on another instance
        await asyncio.gather(*jobs, return_exceptions=True)
        await core.positions.stop()
        await stop_tasks([self._watcher])

    def _leave_at_stop(self, flight: Flight) -> None:
        if self.core.places.shared:
            self.handover.hand_off_all(flight)
        else:
            self.endings.end_all(flight, "shutdown", SHUTDOWN_MESSAGE)

    # -- the parts' doors, as the web layer and the workers use them ---------------------

    async def find(self, request_id: str, last_event_id: int = 0) -> Ticket | None:
        return await self.handover.find(request_id, last_event_id)

    def cancel(self, ticket: Ticket, status: Status, code: str, message: str) -> bool:
        return self.endings.cancel(ticket, status, code, message)

    def purge(self, before: float) -> int:
        return self.endings.purge(before)

    def open_stream(self, ticket: Ticket, stream: OpenStream, client: str, *, resume: bool) -> None:
        self.attendance.open_stream(ticket, stream, client, resume=resume)

    def close_stream(self, ticket: Ticket, stream: OpenStream, client: str) -> None:
        self.attendance.close_stream(ticket, stream, client)

    def subscribe(self, ticket: Ticket) -> None:
        self.attendance.subscribe(ticket)

    def unsubscribe(self, ticket: Ticket, *, reason: str = "disconnected") -> None:
        self.attendance.unsubscribe(ticket, reason=reason)

    def polled(self, ticket: Ticket, grace_s: float) -> None:
        self.attendance.polled(ticket, grace_s)

    async def settled(self) -> None:
        """Wait until the work started in the background so far is done (a shared line's writes)."""
        await self.core.background.settled()

    async def status_changed(self) -> None:
        """Return at the next admission, start or end (for monitors' live status)."""
        await self.core.status.wait()
