"""Joining the line: admission of one request, or a clear refusal.

In order: an Idempotency-Key already used returns its request; a closed gate, a client over its
share or a line that is full (or whose wait is too long) refuses; the cache answers at once; an
identical question rides a flight already in line or running (single-flight); else a new flight
joins the line. Every refusal goes through :meth:`Joining._refuse`, which tells the listeners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

from .attendance import Attendance, count
from .background import landed
from .cache import AnswerCache, CachedAnswer
from .core import Core
from .endings import Endings
from .errors import ClientLimit, IdempotencyMismatch, LineFull, LineUnavailable, Rejected, ShuttingDown, WaitTooLong
from .handover import Handover
from .lines.base import Joiner
from .tickets import Flight, Ticket, new_request_id
from .upstream import WorkflowRequest

KEYED_CLIENT = "key:"  # a client named by its application's API key (web/admission.py), not its address


@dataclass(frozen=True, slots=True)
class Place:
    """Where a newcomer's flight goes: its priority ``tier`` and, on a fair line, its ``share``."""

    tier: str | None
    share: str


class Joining:
    def __init__(self, core: Core, endings: Endings, attendance: Attendance, handover: Handover) -> None:
        self._core = core
        self._endings = endings
        self._attendance = attendance
        self._handover = handover
        self.accepting = True

    async def submit(
        self,
        query: str,
        *,
        client: str,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        idempotency_key: str | None = None,
        tier: str | None = None,
        share: str | None = None,
        max_wait_s: float | None = None,
    ) -> Ticket:
        """Admit a request, or raise a :class:`~guestqueue.errors.Rejected`. ``tier``: the asker's
        priority tier (its API key's); none, or one the line does not have, is the line's default.
        ``share``: whose share it counts in on a fair line (its application; default: ``client``).
        ``max_wait_s``: how long the guest will wait in line (refused at once if the line predicts
        longer; it leaves with ``timeout`` ``deadline`` if still in line then).

        With an ``idempotency_key`` this client already used for a request that is live or still
        replayable, that same request is returned (nothing is admitted, nothing called upstream).
        """
        request_id = new_request_id()
        places = self._core.places
        if idempotency_key is not None and (known := await self._known(client, idempotency_key, request_id)):
            if (known.query, known.parameters, known.session_id) != (query, parameters or {}, session_id):
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used for a different question. Use a new key per question."
                )
            return known
        ticket = Ticket(query, client, parameters or {}, session_id, idempotency_key, max_wait_s, id=request_id)
        try:
            await self._check(ticket)
            await self._admit(ticket, Place(tier, share or client))
        except Rejected:
            if idempotency_key is not None:  # the key may be used again
                self._core.background.run(places.forget_key(client, idempotency_key, request_id))
            raise
        # A shared line: its record is in Redis before the guest hears of it.
        await landed(ticket.recorded, ticket.ending_written)
        return ticket

    def client_limit(self, client: str) -> int:
        """An application's API key has its own share (GUEST_MAX_PER_KEY): callers behind one
        address (an office, a server using the OpenAI SDK) are told apart by their keys."""
        settings = self._core.settings
        return settings.max_per_key if client.startswith(KEYED_CLIENT) else settings.max_per_client

    def retry_after_s(self, position: int) -> int:
        return max(1, math.ceil(self._core.positions.retry_after_s(position)))

    async def _known(self, client: str, idempotency_key: str, request_id: str) -> Ticket | None:
        """The request this client already sent with this key (here, or on another instance); with
        a shared line, else the key is reserved for ``request_id`` at once (two instances asked the
        same key at the same moment admit it once)."""
        core = self._core
        known = core.registry.by_key(client, idempotency_key)
        if known is not None or not core.places.shared:
            return known
        try:
            owner = await core.places.reserve_key(client, idempotency_key, request_id)
        except LineUnavailable as exc:
            self._refuse(client, "", exc)
        return None if owner == request_id else await self._handover.find(owner)

    async def _check(self, ticket: Ticket) -> None:
        """Refuse ``ticket`` if the line is closed to it or its client is over its share here (on a
        shared line its count on every instance is taken as it is admitted: :meth:`_count_client`,
        or the new flight's admission itself)."""
        client, query = ticket.client, ticket.query
        core = self._core
        if not self.accepting:
            self._refuse(client, query, ShuttingDown("The service is restarting. Please try again shortly."))
        try:
            core.gate.check_open()
            limit = self.client_limit(client)
            held = core.registry.held_by(client)
            if core.sessions is not None:
                await core.sessions.check_client(client, held)
            if held >= limit:
                raise self._over_limit(max(held, limit))
        except Rejected as exc:
            self._refuse(client, query, exc)

    def _over_limit(self, held: int) -> ClientLimit:
        noun = "place" if self._core.sessions is not None else "question"
        return ClientLimit(_over_share(noun, held), retry_after_s=self.retry_after_s(1))

    async def _count_client(self, ticket: Ticket) -> None:
        """Take one of the client's places on every instance (a shared line), or refuse it."""
        limit = self.client_limit(ticket.client)
        if not await self._core.places.take_client_slot(ticket.client, limit):
            self._refuse(ticket.client, ticket.query, self._over_limit(limit))

    async def _admit(self, ticket: Ticket, place: Place) -> None:
        """From the cache, on a flight already asked, or on a new flight in line. The client's
        count is taken with the step that admits it, so nothing refused after holds one."""
        core = self._core
        # Same question, parameters and session (or none): never another session's answer.
        key = AnswerCache.key(ticket.query, ticket.parameters, ticket.session_id) if core.cache is not None else None
        if key is not None and (cached := await self._cached(key)) is not None:
            await self._count_client(ticket)
            ticket.from_cache = True
            self._register(ticket)
            self._endings.answer_from_cache(ticket, cached)
            return
        recorded = False  # its place's record, on a shared line
        if core.flights.riding(key) is None:
            flight = await self._join(ticket, key, place)
            recorded = True  # by the admission's own script
        else:
            await self._count_client(ticket)
            ridden = core.flights.riding(key)  # again: it may have ended while the client was counted
            if ridden is None:
                flight = await self._join(ticket, key, place, counted=True)
            else:
                flight = ridden
                flight.tickets.append(ticket)
                ticket.cached = True  # answered by another guest's upstream call
            recorded = ridden is None
        ticket.flight = flight
        self._register(ticket, recorded=recorded)
        self._attendance.expire(ticket)
        if flight.started:
            self._endings.start_ticket(ticket)
            ticket.events.follow(flight.shared)  # the chunks so far, then the rest as they come
        else:
            core.positions.tell(ticket, max(1, core.positions.view.position(flight.id) or flight.position))

    async def _join(self, ticket: Ticket, key: str | None, place: Place, *, counted: bool = False) -> Flight:
        """A new flight for ``ticket``, in line; its client counted with it (unless ``counted``) and,
        on a shared line, its place recorded in the same step."""
        core, spec = self._core, self._core.gate.spec
        request = WorkflowRequest(ticket.id, ticket.query, ticket.parameters, ticket.session_id)
        flight = Flight(key, [ticket], request)
        flight.rank = spec.tier_rank(place.tier)
        if spec.fairness == "fair":
            flight.share = place.share
        try:
            # Only a question that needs a call of its own waits: a cached or shared answer does not.
            if spec.max_predicted_wait_s > 0 or ticket.max_wait_s is not None:
                ahead = await core.line.ahead_of(flight.rank)
                core.gate.check_wait(lambda: self._newcomer_wait_s(ahead), ticket.max_wait_s)
            # The memory line answers without yielding; on Redis an identical question asked
            # during this round trip gets a flight of its own (single-flight is best effort).
            joiner = Joiner(ticket, 0 if counted else self.client_limit(ticket.client))
            flight.position = await core.line.admit(flight, joiner)
        except (WaitTooLong, LineFull, LineUnavailable, ClientLimit) as exc:
            if counted:  # its count was not used
                core.background.run(core.places.give_back_client_slot(ticket.client))
            self._refuse_join(ticket, exc)
        core.flights.joined(flight)
        return flight

    def _refuse_join(self, ticket: Ticket, exc: Rejected) -> NoReturn:
        core = self._core
        if isinstance(exc, ClientLimit):
            exc = self._over_limit(self.client_limit(ticket.client))
        elif isinstance(exc, (LineFull, LineUnavailable)) and exc.retry_after_s is None:
            exc.retry_after_s = self.retry_after_s(core.settings.max_queue_size + 1)
        self._refuse(ticket.client, ticket.query, exc)

    def _newcomer_wait_s(self, ahead: int) -> float:
        """The estimated wait of a newcomer with ``ahead`` flights before it (its tier's place), from
        the line's freshest view."""
        positions = self._core.positions
        view = self._core.line.peek()
        if view is not positions.view:
            positions.use(view)
        return positions.retry_after_s(ahead + 1)

    async def _cached(self, key: str) -> CachedAnswer | None:
        core = self._core
        assert core.cache is not None
        cached = core.cache.get(key)
        if cached is None and core.shared_answers is not None:
            cached = await core.shared_answers.get(key)
            if cached is not None:
                core.cache.put(key, cached)
        return cached

    def _refuse(self, client: str, query: str, exc: Rejected) -> NoReturn:
        exc.counted = True
        for listener in self._core.listeners:
            listener.rejected(client, query, exc.code)
        raise exc

    def _register(self, ticket: Ticket, *, recorded: bool = False) -> None:
        core = self._core
        core.status.notify()
        core.registry.add(ticket)
        for listener in core.listeners:
            listener.admitted(ticket)
        if recorded:
            return
        flight_id = ticket.flight.id if ticket.flight is not None else None
        write = core.places.record(ticket, flight_id)
        if write is not None:
            ticket.recorded = write
            core.background.run(write)


def _over_share(noun: str, n: int) -> str:
    if noun == "place":  # a waiting room: places in line, not questions
        return (
            f"You already have {count(n, 'place')} in this waiting room. Please wait to be let in before joining again."
        )
    return f"You already have {count(n, 'question')} in progress. Please wait for an answer before asking more."
