"""Guests moving between instances of a shared line: taking a request over (a guest resuming here),
handing guests over when this instance stops, and giving the line back what a forgetful Redis lost.

Alone on a line (LocalPlaces), a request is found here or nowhere, and nothing is handed over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .attendance import Attendance
from .core import Core
from .endings import Endings
from .errors import LineUnavailable
from .events import RECONNECT
from .tickets import Flight, Status, Ticket
from .upstream import WorkflowRequest

logger = logging.getLogger("guestqueue")

RECONNECT_AFTER_S = 1.0  # what a `reconnect` event asks a guest to wait before resuming elsewhere


async def _nothing_to_follow(flight: Flight) -> None:
    return None


class Handover:
    def __init__(
        self,
        core: Core,
        endings: Endings,
        attendance: Attendance,
        follow: Callable[[Flight], Awaitable[None]] = _nothing_to_follow,
    ) -> None:
        """``follow``: catch a taken-over request's flight up on what it did elsewhere (the relay)."""
        self._core = core
        self._endings = endings
        self._attendance = attendance
        self._follow = follow

    async def find(self, request_id: str, last_event_id: int = 0) -> Ticket | None:
        """The request, held here or taken over from the instance that held it (shared line)."""
        core = self._core
        ticket = core.registry.get(request_id)
        if not core.places.shared:
            return ticket
        if ticket is not None:
            if ticket.done or await core.places.holder(request_id) in ("", core.places.instance_id):
                return ticket
            # Another instance took it over and its word has not reached us yet: ours is stale.
            self._attendance.release(request_id)
        record = await core.places.claim(request_id)
        if record is None and await core.line.forgetting():
            # Redis forgot the line a moment ago and its holder has not written it back yet.
            raise LineUnavailable("The line is being rebuilt. Please ask again in a moment.", retry_after_s=2)
        return None if record is None else await self._adopt(record, last_event_id)

    async def _adopt(self, record: Any, last_event_id: int) -> Ticket:
        core = self._core
        ticket = Ticket(
            record.query,
            record.client,
            record.parameters,
            record.session_id,
            record.idempotency_key,
            id=record.request_id,
            created_at=record.created_at,
        )
        ticket.cached, ticket.max_wait_s = record.cached, record.max_wait_s
        if record.terminal is not None:  # over already: only its ending is left to hear, under its own id
            ending_id = record.terminal_event_id if record.terminal_event_id is not None else last_event_id + 1
            ticket.events.continue_from(ending_id - 1)
            ticket.end(record.status if record.status.terminal else Status.CANCELLED)
            name, payload = record.terminal
            ticket.events.publish(name, payload)
            core.registry.add(ticket)
            core.registry.finished(ticket)
            return ticket
        flight = core.flights.get(record.flight_id)
        if flight is None:
            request = WorkflowRequest(record.request_id, record.query, record.parameters, record.session_id)
            flight = Flight(None, [], request, id=record.flight_id, number=record.number, rank=record.rank)
            core.flights.adopted(flight)
        started_id = record.started_event_id
        ticket.events.continue_from(started_id - 1 if started_id is not None else last_event_id)
        flight.tickets.append(ticket)
        ticket.flight = flight
        core.registry.add(ticket)
        if flight.started:
            self._endings.start_ticket(ticket)
            ticket.events.follow(flight.shared)
        elif started_id is None:  # still waiting (a started one hears its start from the catch-up below)
            waited_s = max(0.0, time.time() - record.created_at)
            self._attendance.expire(ticket, waited_s)
            core.positions.tell(ticket, max(1, core.positions.view.position(flight.id)))
        await self._follow(flight)  # its flight may have started, or ended, elsewhere
        return ticket

    def hand_off_all(self, flight: Flight) -> None:
        """This instance stops: its guests of ``flight`` hear ``reconnect`` and resume elsewhere."""
        retry_after_ms = round(RECONNECT_AFTER_S * 1000)
        for ticket in list(flight.tickets):
            ticket.events.publish(RECONNECT, {"request_id": ticket.id, "retry_after_ms": retry_after_ms})
            for stream in self._attendance.streams_of(ticket.id):
                stream.end(flush=True)
            # Its place stays this instance's in Redis until a guest claims it elsewhere, or
            # the instance's lease and the reconnect grace run out (lines/redis/places.py reaps it).
            self._endings.let_go_of(ticket, abandon=False, keep_holding=True)

    async def rejoin(self) -> None:
        """Redis took this instance for dead (cut off longer than its lease): its guests' waiting
        flights that left the line go back at their old numbers, and their records are written again."""
        core = self._core
        view = await core.positions.refresh()
        missing = [f for f in core.flights.waiting.values() if view.position(f.id) == 0 and not f.started]
        if missing:
            await self._give_back(missing)
            logger.warning("%d flights rejoined the shared line after Redis forgot this instance", len(missing))

    async def give_back(self) -> None:
        """Redis forgot the whole line (restarted empty, flushed): this instance's guests' waiting
        flights go back at their old numbers (the instances rebuild it in admission order), and
        its guests' records (finished ones too) and Idempotency-Keys are written again."""
        core = self._core
        flights = [f for f in core.flights.waiting.values() if not f.started]
        await self._give_back(flights)
        logger.warning(
            "gave back %d waiting flights and %d guests to a forgetful Redis", len(flights), len(core.registry.live())
        )

    async def _give_back(self, flights: list[Flight]) -> None:
        core = self._core
        await core.line.rebuild([], flights)
        for ticket in core.registry.held():  # the finished too: a guest may look its answer up anywhere
            flight_id = ticket.flight.id if ticket.flight is not None else None
            core.background.run(core.places.record(ticket, flight_id, whole=True))
            if ticket.idempotency_key is not None:
                core.background.run(core.places.reserve_key(ticket.client, ticket.idempotency_key, ticket.id))
