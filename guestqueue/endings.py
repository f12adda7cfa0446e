"""Every way a request ends, each exactly once, and the worker pool's sink.

The workers (or, on a shared line, the relay) report a flight's start, chunks and end through the
:class:`~guestqueue.workers.FlightSink` methods; every admitted ticket ends through
:meth:`Endings._end`, which emits the one terminal event and does the bookkeeping synchronously
(so cancellation cannot interrupt it half-way). A ticket can also leave without an ending
(:meth:`Endings.let_go_of`): another instance took its guest over.
"""

from __future__ import annotations

import logging
from typing import Any

from . import clock
from .cache import CachedAnswer
from .core import Core
from .errors import AnswerTooLarge
from .events import ADMITTED, ERROR, PROCESSING, TIMEOUT, WORKFLOW_COMPLETE, SharedAnswer
from .tickets import Flight, Status, Ticket

logger = logging.getLogger("guestqueue")

TIMEOUT_FALLBACK = (
    "Sorry, this is taking longer than expected. Please try again in a moment, or rephrase your question."
)
DEADLINE = "deadline"  # a guest's own max_wait_sec ran out in line
SHUTDOWN_MESSAGE = "The service is restarting. Please ask again shortly."


class Endings:
    def __init__(self, core: Core) -> None:
        self._core = core

    # -- the FlightSink: called by the workers (or the relay) --------------------------

    def on_started(self, flight: Flight) -> None:
        core = self._core
        core.status.notify()
        core.flights.started(flight)
        core.positions.started()
        for ticket in flight.tickets:
            self.start_ticket(ticket)
            ticket.events.follow(flight.shared)

    def emit_chunk(self, flight: Flight, text: str) -> None:
        flight.answer_parts.append(text)  # one copy, read by every rider's event log
        for ticket in flight.tickets:
            ticket.events.nudge()

    def end_flight_completed(self, flight: Flight) -> None:
        core = self._core
        self._flight_finished(flight, record_duration=True)
        if core.cache is not None and flight.key is not None:
            answer = CachedAnswer(tuple(flight.answer_parts), list(flight.suggested_questions))
            core.cache.put(flight.key, answer)
            if core.shared_answers is not None:
                core.background.run(core.shared_answers.put(flight.key, answer))
        for ticket in list(flight.tickets):
            ticket.answer_parts = flight.answer_parts  # final now: shared, not copied per rider
            ticket.suggested_questions = flight.suggested_questions
            self._end(ticket, Status.COMPLETED, WORKFLOW_COMPLETE, _complete_payload(ticket))

    def end_flight_timeout(self, flight: Flight) -> None:
        self._flight_finished(flight, record_duration=True)
        error = f"No answer within {self._core.settings.request_timeout_s:g} seconds."
        for ticket in list(flight.tickets):
            payload = {"request_id": ticket.id, "error": error, "code": "timeout", "fallback": TIMEOUT_FALLBACK}
            self._end(ticket, Status.TIMEOUT, TIMEOUT, payload, error=error, code="timeout")

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None:
        self._flight_finished(flight)
        for ticket in list(flight.tickets):
            if code == AnswerTooLarge.code:  # the log keeps what the guest heard: a prefix max_answer_bytes bounds
                ticket.answer_parts = flight.answer_parts
            self._end_error(ticket, Status.FAILED, code, message, detail=detail)

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None:
        """An admission line let the flight's guest in (waitingroom/sessions.py): its token ends the request."""
        core = self._core
        self._flight_finished(flight)
        for ticket in list(flight.tickets):
            if core.sessions is not None:
                core.background.run(core.sessions.admitted(ticket.client, ticket.id, grant["expires_at"]))
            self._end(ticket, Status.ADMITTED, ADMITTED, {**grant, "request_id": ticket.id})

    def back_to_line(self, flight: Flight) -> bool:
        return False  # one process: nobody else could run it

    async def release(self, flight: Flight) -> None:
        await self._core.line.finish(flight)

    # -- endings asked for by the other parts -------------------------------------------

    def start_ticket(self, ticket: Ticket) -> None:
        if ticket.expiry_timer is not None:
            ticket.expiry_timer.cancel()
            ticket.expiry_timer = None
        ticket.start()
        for listener in self._core.listeners:
            listener.started(ticket)
        event = ticket.events.publish(PROCESSING, {"request_id": ticket.id})
        self._core.background.run(self._core.places.record(ticket, None, event_id=event.id))

    def answer_from_cache(self, ticket: Ticket, cached: CachedAnswer) -> None:
        ticket.cached = True
        self.start_ticket(ticket)
        ticket.answer_parts = list(cached.chunks)
        ticket.events.follow(SharedAnswer(ticket.answer_parts))
        ticket.suggested_questions = list(cached.suggested_questions)
        self._end(ticket, Status.COMPLETED, WORKFLOW_COMPLETE, _complete_payload(ticket))

    def cancel(self, ticket: Ticket, status: Status, code: str, message: str) -> bool:
        """End one guest's request early; its flight goes on for others riding it. False if already ended."""
        return self._end_error(ticket, status, code, message)

    def end_at_deadline(self, ticket: Ticket) -> bool:
        """The guest said how long it could wait (``max_wait_sec``) and is still in line: it leaves
        with ``timeout`` code ``deadline`` (its place freed, the row says so)."""
        error = f"You asked to wait at most {ticket.max_wait_s:g} seconds, and your turn has not come."
        payload = {"request_id": ticket.id, "error": error, "code": DEADLINE, "fallback": TIMEOUT_FALLBACK}
        return self._end(ticket, Status.TIMEOUT, TIMEOUT, payload, error=error, code=DEADLINE)

    def end_all(self, flight: Flight, code: str, message: str) -> None:
        for ticket in list(flight.tickets):
            self._end_error(ticket, Status.FAILED, code, message)

    def purge(self, before: float) -> int:
        """Send away every guest of this instance still waiting that joined at or before Unix time
        ``before`` (the line's operator cleared it); returns how many."""
        purged = 0
        for ticket in self._core.registry.live():
            if ticket.status is Status.QUEUED and ticket.created_at <= before:
                purged += self.cancel(ticket, Status.CANCELLED, "purged", "The line was cleared. Please ask again.")
        return purged

    def let_go_of(self, ticket: Ticket, *, abandon: bool, keep_holding: bool = False) -> None:
        """Another instance holds ``ticket`` now (or will): forget it here without an ending. With
        ``keep_holding``, this instance keeps its flight's place in Redis (a stop hands it over)."""
        ticket.moved = True
        for timer in (ticket.grace_timer, ticket.expiry_timer):
            if timer is not None:
                timer.cancel()
        ticket.grace_timer = ticket.expiry_timer = None
        self._core.registry.forget(ticket)
        flight = ticket.flight
        if flight is None or ticket not in flight.tickets:
            return
        flight.tickets.remove(ticket)
        if not flight.tickets and not flight.finished:
            waiting = self._flight_finished(flight)
            if not keep_holding:
                self._core.background.run(self._let_go(flight, waiting=waiting, abandon=abandon))

    # -- the one ending ------------------------------------------------------------------

    def _end_error(self, ticket: Ticket, status: Status, code: str, message: str, *, detail: str | None = None) -> bool:
        payload = {"request_id": ticket.id, "error": message, "code": code}
        # An upstream's own words (a traceback, an address) stay out of every public view: the
        # detail goes to the request log's error column only (and to the server log, workers.py).
        return self._end(ticket, status, ERROR, payload, error=message, code=code, detail=detail)

    def _end(
        self,
        ticket: Ticket,
        status: Status,
        event: str,
        payload: dict[str, Any],
        *,
        error: str | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> bool:
        if not ticket.end(status, error=error, error_code=code, error_detail=detail):
            return False
        core = self._core
        core.status.notify()
        if ticket.flight is not None:
            self._leave_flight(ticket, ticket.flight)
        if event == WORKFLOW_COMPLETE:
            payload["duration_ms"] = round(ticket.duration_ms or 0.0, 1)
        ticket.events.publish(event, payload)
        core.background.run(core.places.give_back_client_slot(ticket.client))
        core.registry.finished(ticket)
        for listener in core.listeners:
            listener.ended(ticket)
        # On a shared line, its streams send the ending once this lands: a guest that saw it and
        # resumes on another instance finds it over there too (web/stream.py).
        written = core.places.record(ticket, None)
        if written is not None:
            ticket.ending_written = written
            core.background.run(written)
        logger.info(
            "request %s %s%s wait=%.0fms run=%.0fms",
            ticket.id,
            status.value,
            f" ({code})" if code else "",
            ticket.wait_ms or 0,
            ticket.duration_ms or 0,
        )
        return True

    def _flight_finished(self, flight: Flight, *, record_duration: bool = False) -> bool:
        """True if ``flight`` was still in line."""
        core = self._core
        waiting = core.flights.finished(flight)
        if record_duration and flight.started_mono is not None:
            core.positions.estimator.record(clock.monotonic() - flight.started_mono)
        core.positions.estimator.invalidate()
        return waiting

    def _leave_flight(self, ticket: Ticket, flight: Flight) -> None:
        flight.tickets.remove(ticket)
        if flight.tickets or flight.finished:
            return
        # Nobody rides this flight any more: it leaves the line, or its upstream call stops.
        waiting = self._flight_finished(flight)
        self._core.background.run(self._let_go(flight, waiting=waiting))

    async def _let_go(self, flight: Flight, *, waiting: bool, abandon: bool = True) -> None:
        """This instance holds no more guests of ``flight``. If no instance does (always, alone on
        the line), it leaves the line, or its call (wherever it runs) stops."""
        core = self._core
        if not await core.places.let_go(flight.id) or not abandon:
            return
        if waiting:
            await core.line.leave(flight)
        else:
            await core.places.abandon(flight)


def _complete_payload(ticket: Ticket) -> dict[str, Any]:
    return {
        "request_id": ticket.id,
        "answer": ticket.answer,
        "suggested_questions": ticket.suggested_questions,
        "cached": ticket.cached,
    }
