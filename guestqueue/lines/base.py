"""The waiting line and the pacer as interfaces: one process (``memory``) or many (``redis``).

A *flight* (one upstream call, see tickets.py) waits in line from admission
until it starts. The service admits flights and takes them out when their last
guest leaves; the worker pool asks the line for the next flight it may run and
tells it when the call is over; the position ticker reads one
:class:`LineView` per tick. Nothing else touches the line, so the service and
the workers are the same code whether the line lives in this process or in
Redis, shared by every instance.

Both implementations keep these invariants (tests/test_lines_contract.py
runs the same suite against each):

- **FIFO.** Flights start in admission order (a flight that left never starts);
  with priority tiers, the highest tier first, FIFO within a tier, and a flight
  that waited ``max_starvation_s`` goes before higher-tier flights admitted after it.
- **Fair shares.** Within a tier, flights with a share (a fair line) start in the order of
  their tags: the least served share first, FIFO within a share (fairness.py).
- **Concurrency.** At most ``max_concurrent`` flights run at once (between
  :meth:`Line.start` and :meth:`Line.finish`), across every instance sharing
  the line.
- **Pacing.** Two starts (retries included) are at least ``interval_s`` apart,
  across every instance, and no minute holds more than ``release_per_minute``
  starts (when set); an upstream's Retry-After holds every start
  (:meth:`Pacer.hold`), at most ``max_hold_s``.
- **Capacity.** At most ``max_size`` flights wait, not counting those a free
  slot would start right now.
- **Positions.** A view's positions are exact for the moment it was taken:
  1 = next to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..cache import CachedAnswer
from ..fairness import Shares
from ..stats import Stats
from ..tickets import Flight, Ticket


@dataclass(frozen=True, slots=True)
class Joiner:
    """The guest a new flight is admitted for: a shared line counts its client (at most ``limit``
    places, else ClientLimit) and writes its place's record in the same step as the admission (one
    round trip); a line in one process has nothing to add (the registry counts clients)."""

    ticket: Ticket
    limit: int


@dataclass(frozen=True, slots=True)
class LineView:
    """One snapshot of the whole line (every instance's flights), taken at once."""

    positions: Mapping[str, int]  # flight id -> place in line, 1 = next to start
    running_s: tuple[float, ...] = ()  # how long each running call has been running (for the ETA)
    next_start_s: float = 0.0  # seconds until pacing lets the next flight start
    held_s: float = 0.0  # seconds an upstream's Retry-After still holds every start
    max_concurrent: int = 1
    instances: tuple[dict[str, object], ...] = field(default=())  # the live instances (Redis only)

    @property
    def size(self) -> int:
        return len(self.positions)

    @property
    def active(self) -> int:
        return len(self.running_s)

    def position(self, flight_id: str) -> int:
        """1 = next to start; 0 = not in line (started, left, or never admitted)."""
        return self.positions.get(flight_id, 0)

    def startable_now(self, interval_s: float) -> int:
        """Flights a free slot would start right now: with pacing, at most the one it lets go."""
        free = max(0, self.max_concurrent - self.active)
        if interval_s > 0:
            return min(free, 1 if self.next_start_s <= 0 else 0)
        return free


class Line(Protocol):
    """Flights waiting to start, in admission order, and the gate that starts them."""

    shares: Shares  # a fair line's bookkeeping in this process (fairness.py)

    async def admit(self, flight: Flight, joiner: Joiner | None = None) -> int:
        """Join at the back; returns the flight's position. Raises LineFull (or, with a ``joiner``
        whose client is at its limit on a shared line, ClientLimit)."""
        ...

    async def ahead_of(self, rank: int) -> int:
        """How many flights would start before a newcomer of tier ``rank`` (0 = the highest)."""
        ...

    async def leave(self, flight: Flight) -> bool:
        """Take a waiting flight out of line wherever it stands; False if it was not waiting."""
        ...

    async def next(self) -> Flight:
        """Wait for a flight this instance may run (the memory line: its front; Redis: the global
        front once a slot and the pacing turn are granted to this instance)."""
        ...

    async def start(self, flight: Flight) -> float:
        """Wait for ``flight``'s turn (pacing, slot), then take it out of line as started; returns
        the seconds waited. Cancelling the wait gives the turn back."""
        ...

    async def finish(self, flight: Flight) -> None:
        """``flight``'s call is over (whatever the outcome): its slot is free."""
        ...

    async def charge(self, flight: Flight, service: float) -> None:
        """A fair flight's call (one with a share) ended having cost ``service`` (fairness.py): its
        share is charged the difference from what its start charged, and its waiting flights move."""
        ...

    async def requeue_front(self, flight: Flight) -> None:
        """``flight``'s call stopped before it said anything (its instance is stopping or died): its
        slot is free and it waits again at its old place, ahead of everyone admitted after it."""
        ...

    async def rebuild(self, running: list[Flight], waiting: list[Flight], ended: Sequence[str] = ()) -> int:
        """A line that forgot (Redis restarted empty): ``running`` (flights this instance runs) hold
        their slots again, ``waiting`` (its guests' flights) go back at their old numbers unless a
        runner says they ran (``running``, or ``ended``: ids of flights it ran that ended lately).
        A memory line never forgets."""
        ...

    async def forgetting(self) -> bool:
        """Whether the line forgot and is being given back right now (a memory line never does)."""
        ...

    async def view(self) -> LineView:
        """The whole line now, in a bounded number of steps (never one per flight)."""
        ...

    def peek(self) -> LineView:
        """The freshest view without waiting: the memory line's is exact; a shared line gives the
        last one it took (at most a tick old)."""
        ...

    async def close(self) -> None:
        """Stop background work; the line's state stays (for other instances)."""
        ...

    def reconfigure(
        self,
        *,
        max_size: int,
        max_concurrent: int,
        interval_s: float,
        release_per_minute: int,
        max_starvation_s: float = 120.0,
    ) -> None:
        """The line's limits changed (the admin API): they hold from now on."""
        ...


class Pacer(Protocol):
    """The one limiter of upstream starts, shared by every instance of the line."""

    async def hold(self, delay_s: float) -> None:
        """No start for ``delay_s`` seconds (an upstream's Retry-After), at most ``max_hold_s``."""
        ...

    async def retry_turn(self) -> float:
        """A start for a retry of a flight that already runs (holds a slot): served before every
        flight still in line; returns the seconds waited."""
        ...


class Places(Protocol):
    """Guests' places: on a shared line, request records any instance can take over
    (lines/redis/places.py); alone, nothing to share (lines/local.py's LocalPlaces)."""

    instance_id: str
    shared: bool  # another instance may take a guest over (and finish what this one stops)

    def record(
        self, ticket: Ticket, flight_id: str | None, *, event_id: int | None = None, whole: bool = False
    ) -> asyncio.Future[None] | None: ...

    async def load(self, request_id: str) -> Any: ...

    async def claim(self, request_id: str) -> Any: ...

    async def holder(self, request_id: str) -> str: ...

    async def let_go(self, flight_id: str) -> bool: ...

    async def take_client_slot(self, client: str, limit: int) -> bool: ...

    async def reserve_key(self, client: str, idempotency_key: str, request_id: str) -> str: ...

    async def forget_key(self, client: str, idempotency_key: str, request_id: str) -> None: ...

    def give_back_client_slot(self, client: str) -> Awaitable[None] | None: ...

    async def abandon(self, flight: Flight) -> None: ...


class Tally(Protocol):
    """Every instance's totals and recent requests (lines/redis/tally.py); also a request listener."""

    async def stats(self, local: Stats) -> Stats: ...

    async def recent(self) -> list[dict[str, Any]]: ...


class SharedAnswers(Protocol):
    """The answer cache every instance shares (lines/redis/answers.py)."""

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer) -> None: ...
