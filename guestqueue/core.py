"""What every part of a running line shares: its spec, its line, its flights and tickets, who hears
of each request, and the work it does not wait for. Built once (runtime.py) and handed to the parts
(joining.py, endings.py, attendance.py, handover.py), which own the steps; the core owns no step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import clock
from .background import Background
from .cache import AnswerCache
from .config import Settings
from .flights import Flights
from .gate import Gate
from .lines.base import Line, Pacer, Places, SharedAnswers
from .positions import Positions
from .registry import Registry
from .stats import Stats
from .tickets import Ticket

# A finished request's events stay replayable this long (for a guest reconnecting just
# after the end); then only its terminal event is kept.
REPLAY_AFTER_END_S = 60.0


class RequestListener(Protocol):
    """Hears every request's admission, start and end (stats, the request log, metrics, webhooks)."""

    def admitted(self, ticket: Ticket) -> None: ...

    def started(self, ticket: Ticket) -> None: ...

    def ended(self, ticket: Ticket) -> None: ...

    def rejected(self, client: str, query: str, code: str) -> None: ...


class QuietListener:
    """A :class:`RequestListener` that hears nothing: a listener overrides only what it needs."""

    def admitted(self, ticket: Ticket) -> None:
        return None

    def started(self, ticket: Ticket) -> None:
        return None

    def ended(self, ticket: Ticket) -> None:
        return None

    def rejected(self, client: str, query: str, code: str) -> None:
        return None


class ClientSessions(Protocol):
    """An admission line's sessions (waitingroom/sessions.py), as far as a client's limit is concerned."""

    async def check_client(self, client: str, waiting: int) -> None: ...

    def admitted(self, client: str, request_id: str, expires_at: float) -> Awaitable[None]: ...


class StatusSignal:
    """Wakes monitors' live status at every admission, start and end."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        # set() wakes every current waiter; clear() at once makes later waits block again.
        self._event.set()
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(eq=False)
class Core:
    gate: Gate  # the line's spec (settings, mode, tiers), replaced whole by reconfigure
    line: Line
    pacer: Pacer
    places: Places  # guests' places: shared through Redis, or this process's alone (LocalPlaces)
    listeners: list[RequestListener]  # fixed before the line starts (runtime.py)
    notice: Callable[[], dict[str, Any]]  # what every `queued` event adds (the gate's, a pull line's)
    stats: Stats = field(default_factory=Stats)
    shared_answers: SharedAnswers | None = None  # behind the cache: the answers every instance cached
    sessions: ClientSessions | None = None  # an admission line's: open sessions count toward a client's limit
    background: Background = field(default_factory=Background)
    status: StatusSignal = field(default_factory=StatusSignal)
    flights: Flights = field(default_factory=Flights)
    registry: Registry = field(init=False)
    positions: Positions = field(init=False)
    cache: AnswerCache | None = field(init=False)

    def __post_init__(self) -> None:
        settings, spec = self.settings, self.gate.spec
        self.registry = Registry(settings.history_size, replay_s=max(REPLAY_AFTER_END_S, settings.reconnect_grace_s))
        self.cache = AnswerCache(settings.cache_size, settings.cache_ttl_s) if settings.cache_size > 0 else None
        self.positions = Positions(
            settings,
            self.line,
            self.flights.waiting,
            notice=self.notice,
            release_per_minute=spec.release_per_minute,
            on_tick=[self._compact],
        )

    def _compact(self) -> None:
        self.registry.compact_expired(clock.monotonic())

    @property
    def settings(self) -> Settings:
        return self.gate.spec.settings

    @property
    def name(self) -> str:
        return self.gate.spec.name
