"""The running queue: admission, the line, the workers, and every way a request ends.

A :class:`QueueService` is created in the app's lifespan (runtime.py) with the
line and pacer it uses (in memory, or shared through Redis); nothing lives in
module globals, so two apps can run side by side. The worker pool runs flights
and reports back through the :class:`~guestqueue.workers.FlightSink` methods
(``on_started`` … ``end_flight_error``); the position ticker lives in
positions.py; stats, the request log and the metrics hear every admission,
start and end as listeners. Every
admitted ticket ends exactly once, through :meth:`QueueService._end`, which
emits the one terminal event and does the bookkeeping synchronously (so
cancellation cannot interrupt it half-way).

Admission answers from the cache when it can, lets an identical question
ride a flight already in line or running (single-flight), and otherwise puts
a new flight in line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol

from . import clock
from .cache import AnswerCache, CachedAnswer
from .config import Settings
from .errors import (
    AnswerTooLarge,
    ClientLimit,
    IdempotencyMismatch,
    LineFull,
    LineUnavailable,
    Rejected,
    ShuttingDown,
    WaitTooLong,
)
from .events import ADMITTED, ERROR, PROCESSING, RECONNECT, TIMEOUT, WORKFLOW_COMPLETE, SharedAnswer
from .gate import Gate
from .history import Registry, Stats
from .lines.base import Line, Pacer, Places, SharedAnswers, Tally
from .linespec import default_line
from .positions import Positions
from .stopping import stop_tasks
from .tickets import Flight, Status, Ticket, new_request_id
from .upstream import WorkflowRequest

logger = logging.getLogger("guestqueue")

TIMEOUT_FALLBACK = (
    "Sorry, this is taking longer than expected. Please try again in a moment, or rephrase your question."
)
SHUTDOWN_MESSAGE = "The service is restarting. Please ask again shortly."
RECONNECT_AFTER_S = 1.0  # what a `reconnect` event asks a guest to wait before resuming elsewhere
DROP_MESSAGES = {
    "disconnected": "The guest disconnected.",
    "send_timeout": "The guest stopped reading the answer.",
    "stopped_polling": "The guest stopped asking for its place.",
}
# A finished request's events stay replayable this long (for a guest reconnecting just
# after the end); then only its terminal event is kept.
REPLAY_AFTER_END_S = 60.0
# Open SSE streams of one request: a guest reconnecting while its old stream is not yet seen to be
# gone needs two, a second tab three. A newer stream ends the oldest beyond it.
MAX_STREAMS_PER_REQUEST = 3
# Resume streams one client may hold open, per question it may have (GUEST_MAX_PER_CLIENT): a guest
# reconnecting every question it has is never refused; 2 000 resume streams of one client are.
STREAMS_PER_QUESTION = MAX_STREAMS_PER_REQUEST
KEYED_CLIENT = "key:"  # a client named by its application's API key (web/admission.py), not its address


class OpenStream(Protocol):
    def check(self, now: float) -> None: ...

    def end(self, *, flush: bool = False) -> None: ...


class RequestListener(Protocol):
    """Hears every request's admission, start and end (stats, the request log, metrics)."""

    def admitted(self, ticket: Ticket) -> None: ...

    def started(self, ticket: Ticket) -> None: ...

    def ended(self, ticket: Ticket) -> None: ...

    def rejected(self, client: str, query: str, code: str) -> None: ...


class ClientSessions(Protocol):
    """An admission line's sessions (waitingroom/sessions.py), as far as a client's limit is concerned."""

    async def check_client(self, client: str, waiting: int) -> None: ...

    def admitted(self, client: str, request_id: str, expires_at: float) -> Awaitable[None]: ...


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


class QueueService:
    def __init__(
        self,
        settings: Settings,
        line: Line,
        pacer: Pacer,
        *,
        places: Places | None = None,
        tally: Tally | None = None,
        shared_answers: SharedAnswers | None = None,
        upstream_kind: str = "custom",
        gate: Gate | None = None,
        sessions: ClientSessions | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions  # an admission line's: open sessions count toward a client's limit
        self.gate = gate if gate is not None else Gate(default_line(settings))
        self.name = self.gate.spec.name  # the line's name
        self.line = line
        self.pacer = pacer
        self.places = places  # a shared line's request records (None: this process is the whole line)
        self.tally = tally  # a shared line's totals and recent requests (None: ours are all there is)
        self.shared_answers = shared_answers  # behind self.cache: the answers every instance cached
        self.upstream_kind = upstream_kind
        self.stats = Stats()
        self.listeners: list[RequestListener] = [self.stats]
        self.registry = Registry(settings.history_size, replay_s=max(REPLAY_AFTER_END_S, settings.reconnect_grace_s))
        self.cache = AnswerCache(settings.cache_size, settings.cache_ttl_s) if settings.cache_size > 0 else None
        self.inflight: dict[str, Flight] = {}  # flights by cache key, for single-flight
        self.waiting: dict[str, Flight] = {}  # this instance's flights in line, by id
        self.running: dict[str, Flight] = {}  # this instance's flights started and not ended
        self.positions = Positions(
            settings,
            line,
            self.waiting,
            notice=self.gate.notice,
            release_per_minute=self.gate.spec.release_per_minute,
        )
        self.positions.on_tick.append(lambda: self.registry.compact_expired(clock.monotonic()))
        self.health_checks: list[Callable[[], list[str]]] = []  # problems the other parts see
        self.per_client: Counter[str] = Counter()
        self.accepting = True
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[object]] = set()
        # Set by the runtime when flights may run on another instance: stop the call there.
        self.on_abandoned: Callable[[Flight], None] | None = None
        # Set by the runtime with a shared line: catch a taken-over request's flight up on its events.
        self.on_adopted: Callable[[Flight], Awaitable[None]] | None = None
        self.on_drain: list[Callable[[], None]] = []  # run when shutdown begins
        self.busy: list[Callable[[], bool]] = []  # other work the shutdown grace waits for
        self.streams: set[OpenStream] = set()  # the guests' open SSE responses
        self.request_streams: dict[str, list[OpenStream]] = {}  # by request id, oldest first
        self.client_streams: Counter[str] = Counter()
        self._stopping: asyncio.Future[None] | None = None
        self._status_changed = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"QueueService(queued={len(self.waiting)}, active={len(self.running)}, "
            f"total={self.stats.total_requests}, line={self.line!r})"
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.positions.start()
        self._watcher = asyncio.create_task(self._watch_streams(), name="guestqueue-streams")

    def begin_shutdown(self) -> None:
        """Stop admitting now and drain in the background (see :meth:`stop`)."""
        self.accepting = False
        self._notify_status()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def stop(self) -> None:
        """Refuse new guests, end those still in line, let running work finish for the shutdown grace,
        then end everything else. Every guest gets exactly one terminal event."""
        self.begin_shutdown()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        deadline = clock.monotonic() + self.settings.shutdown_grace_s
        for drain in self.on_drain:
            drain()  # e.g. the workers take no new flight
        # Guests still waiting will not be served by this process: with a shared line they keep
        # their places and resume on another instance; alone, they hear it is over.
        for flight in list(self.waiting.values()):
            if self.places is not None:
                self._hand_off_all(flight)
            else:
                self._end_all(flight, "shutdown", SHUTDOWN_MESSAGE)
        # Running calls get the grace: our guests' (wherever they run) and, with a shared line, the
        # calls this instance runs for other instances' guests.
        while (self.running or any(busy() for busy in self.busy)) and clock.monotonic() < deadline:
            await asyncio.sleep(0.05)
        jobs = [flight.job for flight in self.running.values() if flight.job is not None]
        for flight in list(self.running.values()):
            if self.places is not None:
                self._hand_off_all(flight)  # its call goes on (or is retried) on another instance
            else:
                self._end_all(flight, "shutdown", SHUTDOWN_MESSAGE)
        await asyncio.gather(*jobs, return_exceptions=True)
        await self.positions.stop()
        await stop_tasks([self._watcher])

    # -- admission -----------------------------------------------------------------

    async def submit(
        self,
        query: str,
        *,
        client: str,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        idempotency_key: str | None = None,
        tier: str | None = None,
    ) -> Ticket:
        """Admit a request, or raise a :class:`~guestqueue.errors.Rejected`. ``tier``: the asker's
        priority tier (its API key's); none, or one the line does not have, is the line's default.

        With an ``idempotency_key`` this client already used for a request that is live or still
        replayable, that same request is returned (nothing is admitted, nothing called upstream).
        """
        request_id = new_request_id()
        if idempotency_key is not None and (known := await self._known(client, idempotency_key, request_id)):
            if (known.query, known.parameters, known.session_id) != (query, parameters or {}, session_id):
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used for a different question. Use a new key per question."
                )
            return known
        try:
            ticket = await self._submit(query, client, parameters, session_id, idempotency_key, request_id, tier)
            if self.places is not None:
                await self.settled()  # its record is in Redis before the guest hears of it
            return ticket
        except Rejected:
            if idempotency_key is not None and self.places is not None:  # the key may be used again
                self._background(self.places.forget_key(client, idempotency_key, request_id))
            raise

    async def _known(self, client: str, idempotency_key: str, request_id: str) -> Ticket | None:
        """The request this client already sent with this key (here, or on another instance); with
        a shared line, else the key is reserved for ``request_id`` at once (two instances asked the
        same key at the same moment admit it once)."""
        known = self.registry.by_key(client, idempotency_key)
        if known is not None or self.places is None:
            return known
        try:
            owner = await self.places.reserve_key(client, idempotency_key, request_id)
        except LineUnavailable as exc:
            self._reject(client, "", exc)
        return None if owner == request_id else await self.find(owner)

    async def _submit(
        self,
        query: str,
        client: str,
        parameters: dict[str, Any] | None,
        session_id: str | None,
        idempotency_key: str | None,
        request_id: str,
        tier: str | None,
    ) -> Ticket:
        if not self.accepting:
            self._reject(client, query, ShuttingDown("The service is restarting. Please try again shortly."))
        try:
            self.gate.check_open()
        except Rejected as exc:
            self._reject(client, query, exc)
        limit = self._client_limit(client)
        held = self.per_client[client]
        if self.sessions is not None:
            try:
                await self.sessions.check_client(client, held)
            except Rejected as exc:
                self._reject(client, query, exc)
        if held >= limit or (self.places is not None and not await self._take_client_slot(client, query)):
            if self.sessions is not None:  # a waiting room: places in line, not questions
                words = (
                    f"You already have {_count(max(held, limit), 'place')} in this waiting room. "
                    "Please wait to be let in before joining again."
                )
            else:
                words = (
                    f"You already have {_count(max(held, limit), 'question')} in progress. "
                    "Please wait for an answer before asking more."
                )
            self._reject(client, query, ClientLimit(words, retry_after_s=self._retry_after_s(1)))
        try:
            return await self._admit(query, client, parameters, session_id, idempotency_key, request_id, tier)
        except Rejected:
            if self.places is not None:  # the client's count taken above was not used
                self._background(self.places.give_back_client_slot(client))
            raise

    def _client_limit(self, client: str) -> int:
        """An application's API key has its own share (GUEST_MAX_PER_KEY): callers behind one
        address (an office, a server using the OpenAI SDK) are told apart by their keys."""
        return self.settings.max_per_key if client.startswith(KEYED_CLIENT) else self.settings.max_per_client

    async def _take_client_slot(self, client: str, query: str) -> bool:
        assert self.places is not None
        try:
            return await self.places.take_client_slot(client, self._client_limit(client))
        except LineUnavailable as exc:
            self._reject(client, query, exc)

    async def _admit(
        self,
        query: str,
        client: str,
        parameters: dict[str, Any] | None,
        session_id: str | None,
        idempotency_key: str | None,
        request_id: str,
        tier: str | None,
    ) -> Ticket:
        ticket = Ticket(query, client, parameters or {}, session_id, idempotency_key, id=request_id)
        # Same question, parameters and session (or none): never another session's answer.
        key = AnswerCache.key(query, ticket.parameters, session_id) if self.cache is not None else None
        if key is not None and (cached := await self._cached(key)) is not None:
            ticket.from_cache = True
            self._register(ticket)
            self._answer_from_cache(ticket, cached)
            return ticket
        flight = self.inflight.get(key) if key is not None else None
        if flight is None:
            flight = Flight(key, [ticket], WorkflowRequest(ticket.id, query, ticket.parameters, session_id))
            flight.rank = self.gate.spec.tier_rank(tier)
            try:
                # Only a question that needs a call of its own waits: a cached or shared answer does not.
                if self.gate.spec.max_predicted_wait_s > 0:
                    ahead = await self.line.ahead_of(flight.rank)
                    self.gate.check_wait(lambda: self._newcomer_wait_s(ahead))
                # The memory line answers without yielding; on Redis an identical question asked
                # during this round trip gets a flight of its own (single-flight is best effort).
                flight.position = await self.line.admit(flight)
            except WaitTooLong as exc:
                self._reject(client, query, exc)
            except (LineFull, LineUnavailable) as exc:
                if exc.retry_after_s is None:
                    exc.retry_after_s = self._retry_after_s(self.settings.max_queue_size + 1)
                self._reject(client, query, exc)
            if not flight.started:
                self.waiting[flight.id] = flight
                flight.joined_mono = clock.monotonic()  # the line has it now (positions.py)
            if key is not None:
                self.inflight[key] = flight
        else:
            flight.tickets.append(ticket)
            ticket.cached = True  # answered by another guest's upstream call
        ticket.flight = flight
        self._register(ticket)
        ticket.expiry_timer = asyncio.get_running_loop().call_later(self.settings.max_wait_s, self._expire, ticket)
        if flight.started:
            self._start_ticket(ticket)
            ticket.events.follow(flight.shared)  # the chunks so far, then the rest as they come
        else:
            self.positions.tell(ticket, max(1, self.positions.view.position(flight.id) or flight.position))
        return ticket

    def _newcomer_wait_s(self, ahead: int) -> float:
        """The estimated wait of a newcomer with ``ahead`` flights before it (its tier's place), from
        the line's freshest view."""
        view = self.line.peek()
        if view is not self.positions.view:
            self.positions.use(view)
        return self.positions.retry_after_s(ahead + 1)

    async def _cached(self, key: str) -> CachedAnswer | None:
        assert self.cache is not None
        cached = self.cache.get(key)
        if cached is None and self.shared_answers is not None:
            cached = await self.shared_answers.get(key)
            if cached is not None:
                self.cache.put(key, cached)
        return cached

    def _reject(self, client: str, query: str, exc: Rejected) -> NoReturn:
        exc.counted = True
        for listener in self.listeners:
            listener.rejected(client, query, exc.code)
        raise exc

    def _register(self, ticket: Ticket) -> None:
        self._notify_status()
        self.per_client[ticket.client] += 1
        self.registry.add(ticket)
        for listener in self.listeners:
            listener.admitted(ticket)
        if self.places is not None:
            flight_id = ticket.flight.id if ticket.flight is not None else None
            self._background(self.places.record(ticket, flight_id))

    def _retry_after_s(self, position: int) -> int:
        return max(1, math.ceil(self.positions.retry_after_s(position)))

    def _answer_from_cache(self, ticket: Ticket, cached: CachedAnswer) -> None:
        ticket.cached = True
        self._start_ticket(ticket)
        ticket.answer_parts = list(cached.chunks)
        ticket.events.follow(SharedAnswer(ticket.answer_parts))
        ticket.suggested_questions = list(cached.suggested_questions)
        self._end(ticket, Status.COMPLETED, WORKFLOW_COMPLETE, self._complete_payload(ticket))

    # -- guests coming and going ---------------------------------------------------

    def open_stream(self, ticket: Ticket, stream: OpenStream, client: str, *, resume: bool) -> None:
        """Count an SSE stream of ``ticket`` held by ``client``; raise ClientLimit for a resume stream
        beyond the client's share, and end the request's oldest stream beyond MAX_STREAMS_PER_REQUEST."""
        limit = self.settings.max_per_client * STREAMS_PER_QUESTION
        if resume and self.client_streams[client] >= limit:
            self.stats.rejections[ClientLimit.code] += 1
            exc = ClientLimit(
                f"You already have {_count(limit, 'open stream')}. Close one before opening more.", retry_after_s=1
            )
            exc.counted = True
            raise exc
        streams = self.request_streams.setdefault(ticket.id, [])
        streams.append(stream)
        self.client_streams[client] += 1
        if len(streams) > MAX_STREAMS_PER_REQUEST:
            streams.pop(0).end()  # the newest wins: the guest's latest tab or reconnect

    def close_stream(self, ticket: Ticket, stream: OpenStream, client: str) -> None:
        streams = self.request_streams.get(ticket.id, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self.request_streams.pop(ticket.id, None)
        self.client_streams[client] -= 1
        if self.client_streams[client] <= 0:
            del self.client_streams[client]

    def subscribe(self, ticket: Ticket) -> None:
        ticket.subscribers += 1
        if ticket.grace_timer is not None:
            ticket.grace_timer.cancel()
            ticket.grace_timer = None

    def unsubscribe(self, ticket: Ticket, *, reason: str = "disconnected") -> None:
        """A stream ended; ``reason`` (``disconnected``, ``send_timeout``) is the row's code if the guest
        does not come back within the reconnect grace."""
        ticket.subscribers -= 1
        if ticket.subscribers == 0 and not ticket.done and not ticket.moved:
            ticket.drop_reason = reason
            loop = asyncio.get_running_loop()
            ticket.grace_timer = loop.call_later(self.settings.reconnect_grace_s, self._abandon, ticket)

    def polled(self, ticket: Ticket, grace_s: float) -> None:
        """A guest following by polling (an admission line's ``GET …/join/{id}``) keeps its place while
        it polls: without a stream, it is let go ``grace_s`` after its last poll."""
        if ticket.done or ticket.moved or ticket.subscribers > 0:
            return
        if ticket.grace_timer is not None:
            ticket.grace_timer.cancel()
        ticket.drop_reason = "stopped_polling"
        ticket.grace_timer = asyncio.get_running_loop().call_later(grace_s, self._abandon, ticket)

    def _abandon(self, ticket: Ticket) -> None:
        ticket.grace_timer = None
        if ticket.subscribers == 0:
            code = ticket.drop_reason or "disconnected"
            self.cancel(ticket, Status.CANCELLED, code, DROP_MESSAGES.get(code, "The guest disconnected."))

    def _expire(self, ticket: Ticket) -> None:
        ticket.expiry_timer = None
        if ticket.status is Status.QUEUED:
            self.cancel(
                ticket, Status.CANCELLED, "wait_timeout", "The line is moving slowly today. Please try again later."
            )

    def purge(self, before: float) -> int:
        """Send away every guest of this instance still waiting that joined at or before Unix time
        ``before`` (the line's operator cleared it); returns how many."""
        purged = 0
        for ticket in self.registry.live():
            if ticket.status is Status.QUEUED and ticket.created_at <= before:
                purged += self.cancel(ticket, Status.CANCELLED, "purged", "The line was cleared. Please ask again.")
        return purged

    def cancel(self, ticket: Ticket, status: Status, code: str, message: str) -> bool:
        """End one guest's request early; its flight goes on for others riding it. False if already ended."""
        return self._end_error(ticket, status, code, message)

    # -- flights: called by the workers (FlightSink) ------------------------------

    def on_started(self, flight: Flight) -> None:
        self._notify_status()
        self.waiting.pop(flight.id, None)
        self.running[flight.id] = flight
        flight.started_mono = clock.monotonic()
        self.positions.started()
        for ticket in flight.tickets:
            self._start_ticket(ticket)
            ticket.events.follow(flight.shared)

    def emit_chunk(self, flight: Flight, text: str) -> None:
        flight.answer_parts.append(text)  # one copy, read by every rider's event log
        for ticket in flight.tickets:
            ticket.events.nudge()

    def end_flight_completed(self, flight: Flight) -> None:
        self._flight_finished(flight, record_duration=True)
        if self.cache is not None and flight.key is not None:
            answer = CachedAnswer(tuple(flight.answer_parts), list(flight.suggested_questions))
            self.cache.put(flight.key, answer)
            if self.shared_answers is not None:
                self._background(self.shared_answers.put(flight.key, answer))
        for ticket in list(flight.tickets):
            ticket.answer_parts = flight.answer_parts  # final now: shared, not copied per rider
            ticket.suggested_questions = flight.suggested_questions
            self._end(ticket, Status.COMPLETED, WORKFLOW_COMPLETE, self._complete_payload(ticket))

    def end_flight_timeout(self, flight: Flight) -> None:
        self._flight_finished(flight, record_duration=True)
        error = f"No answer within {self.settings.request_timeout_s:g} seconds."
        for ticket in list(flight.tickets):
            payload = {"request_id": ticket.id, "error": error, "fallback": TIMEOUT_FALLBACK}
            self._end(ticket, Status.TIMEOUT, TIMEOUT, payload, error=error, code="timeout")

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None:
        self._flight_finished(flight)
        for ticket in list(flight.tickets):
            if code == AnswerTooLarge.code:  # the log keeps what the guest heard: a prefix max_answer_bytes bounds
                ticket.answer_parts = flight.answer_parts
            self._end_error(ticket, Status.FAILED, code, message, detail=detail)

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None:
        """An admission line let the flight's guest in (waitingroom/sessions.py): its token ends the request."""
        self._flight_finished(flight)
        for ticket in list(flight.tickets):
            if self.sessions is not None:
                self._background(self.sessions.admitted(ticket.client, ticket.id, grant["expires_at"]))
            self._end(ticket, Status.ADMITTED, ADMITTED, {**grant, "request_id": ticket.id})

    def _end_all(self, flight: Flight, code: str, message: str) -> None:
        for ticket in list(flight.tickets):
            self._end_error(ticket, Status.FAILED, code, message)

    def _flight_finished(self, flight: Flight, *, record_duration: bool = False) -> None:
        flight.finished = True
        self.waiting.pop(flight.id, None)
        self.running.pop(flight.id, None)
        if flight.key is not None and self.inflight.get(flight.key) is flight:
            del self.inflight[flight.key]
        if record_duration and flight.started_mono is not None:
            self.positions.estimator.record(clock.monotonic() - flight.started_mono)
        self.positions.estimator.invalidate()

    def _leave_flight(self, ticket: Ticket, flight: Flight) -> None:
        flight.tickets.remove(ticket)
        if flight.tickets or flight.finished:
            return
        # Nobody rides this flight any more: it leaves the line, or its upstream call stops.
        waiting = flight.id in self.waiting
        self._flight_finished(flight)
        if self.places is not None:
            self._background(self._let_go(flight, waiting=waiting))
            return
        if waiting:
            self._background(self.line.leave(flight))
        if flight.job is not None and not flight.job.done():
            flight.job.cancel()

    async def _let_go(self, flight: Flight, *, waiting: bool, abandon: bool = True) -> None:
        """This instance holds no more guests of a flight of the shared line. If no instance does,
        it leaves the line, or its call (on whichever instance runs it) stops."""
        assert self.places is not None
        if not await self.places.let_go(flight.id) or not abandon:
            return
        if waiting:
            await self.line.leave(flight)
        elif self.on_abandoned is not None:
            self.on_abandoned(flight)

    # -- a shared line: guests moving between instances ------------------------------

    async def find(self, request_id: str, last_event_id: int = 0) -> Ticket | None:
        """The request, held here or taken over from the instance that held it (shared line)."""
        ticket = self.registry.get(request_id)
        if self.places is None:
            return ticket
        if ticket is not None:
            if ticket.done or await self.places.holder(request_id) in ("", self.places.instance_id):
                return ticket
            # Another instance took it over and its word has not reached us yet: ours is stale.
            self.release(request_id)
        record = await self.places.claim(request_id)
        if record is None and await self.line.forgetting():
            # Redis forgot the line a moment ago and its holder has not written it back yet.
            raise LineUnavailable("The line is being rebuilt. Please ask again in a moment.", retry_after_s=2)
        return None if record is None else await self._adopt(record, last_event_id)

    async def _adopt(self, record: Any, last_event_id: int) -> Ticket:
        ticket = Ticket(
            record.query,
            record.client,
            record.parameters,
            record.session_id,
            record.idempotency_key,
            id=record.request_id,
            created_at=record.created_at,
        )
        ticket.cached = record.cached
        if record.terminal is not None:  # over already: only its ending is left to hear, under its own id
            ending_id = record.terminal_event_id if record.terminal_event_id is not None else last_event_id + 1
            ticket.events.continue_from(ending_id - 1)
            ticket.end(record.status if record.status.terminal else Status.CANCELLED)
            name, payload = record.terminal
            ticket.events.publish(name, payload)
            self.registry.add(ticket)
            self.registry.finished(ticket)
            return ticket
        flight = self.waiting.get(record.flight_id) or self.running.get(record.flight_id)
        if flight is None:
            request = WorkflowRequest(record.request_id, record.query, record.parameters, record.session_id)
            flight = Flight(None, [], request, id=record.flight_id, number=record.number, rank=record.rank)
            self.waiting[flight.id] = flight
        started_id = record.started_event_id
        ticket.events.continue_from(started_id - 1 if started_id is not None else last_event_id)
        flight.tickets.append(ticket)
        ticket.flight = flight
        self.per_client[ticket.client] += 1
        self.registry.add(ticket)
        if flight.started:
            self._start_ticket(ticket)
            ticket.events.follow(flight.shared)
        elif started_id is None:  # still waiting (a started one hears its start from the catch-up below)
            waited_s = max(0.0, time.time() - record.created_at)
            ticket.expiry_timer = asyncio.get_running_loop().call_later(
                max(0.0, self.settings.max_wait_s - waited_s), self._expire, ticket
            )
            self.positions.tell(ticket, max(1, self.positions.view.position(flight.id)))
        if self.on_adopted is not None:
            await self.on_adopted(flight)  # its flight may have started, or ended, elsewhere
        return ticket

    async def rejoin(self) -> None:
        """Redis took this instance for dead (cut off longer than its lease): its guests' waiting
        flights that left the line go back at their old numbers, and their records are written again."""
        view = await self.positions.refresh()
        missing = [f for f in self.waiting.values() if view.position(f.id) == 0 and not f.started]
        if missing:
            await self._give_back(missing)
            logger.warning("%d flights rejoined the shared line after Redis forgot this instance", len(missing))

    async def give_back(self) -> None:
        """Redis forgot the whole line (restarted empty, flushed): this instance's guests' waiting
        flights go back at their old numbers (the instances rebuild it in admission order), and
        its guests' records (finished ones too) and Idempotency-Keys are written again."""
        flights = [f for f in self.waiting.values() if not f.started]
        await self._give_back(flights)
        logger.warning(
            "gave back %d waiting flights and %d guests to a forgetful Redis", len(flights), len(self.registry.live())
        )

    async def _give_back(self, flights: list[Flight]) -> None:
        await self.line.rebuild([], flights)
        if self.places is None:
            return
        for ticket in self.registry.held():  # the finished too: a guest may look its answer up anywhere
            flight_id = ticket.flight.id if ticket.flight is not None else None
            self._background(self.places.record(ticket, flight_id, whole=True))
            if ticket.idempotency_key is not None:
                self._background(self.places.reserve_key(ticket.client, ticket.idempotency_key, ticket.id))

    def release(self, request_id: str) -> None:
        """Another instance took this request over: let go of it without ending it."""
        ticket = self.registry.get(request_id)
        if ticket is None or ticket.done:
            return
        for stream in list(self.request_streams.get(ticket.id, [])):
            stream.end()
        self._let_go_of(ticket, abandon=False)

    def _hand_off_all(self, flight: Flight) -> None:
        """This instance stops: its guests of ``flight`` hear ``reconnect`` and resume elsewhere."""
        retry_after_ms = round(RECONNECT_AFTER_S * 1000)
        for ticket in list(flight.tickets):
            ticket.events.publish(RECONNECT, {"request_id": ticket.id, "retry_after_ms": retry_after_ms})
            for stream in list(self.request_streams.get(ticket.id, [])):
                stream.end(flush=True)
            # Its place stays this instance's in Redis until a guest claims it elsewhere, or
            # the instance's lease and the reconnect grace run out (lines/redis/places.py reaps it).
            self._let_go_of(ticket, abandon=False, keep_holding=True)

    def _let_go_of(self, ticket: Ticket, *, abandon: bool, keep_holding: bool = False) -> None:
        ticket.moved = True
        for timer in (ticket.grace_timer, ticket.expiry_timer):
            if timer is not None:
                timer.cancel()
        ticket.grace_timer = ticket.expiry_timer = None
        self.registry.forget(ticket)
        self.per_client[ticket.client] -= 1
        if self.per_client[ticket.client] <= 0:
            del self.per_client[ticket.client]
        flight = ticket.flight
        if flight is None or ticket not in flight.tickets:
            return
        flight.tickets.remove(ticket)
        if not flight.tickets and not flight.finished:
            waiting = flight.id in self.waiting
            self._flight_finished(flight)
            if not keep_holding:
                self._background(self._let_go(flight, waiting=waiting, abandon=abandon))

    async def settled(self) -> None:
        """Wait for the shared line to hear what just happened here (records, leaves), so that an
        answer sent now is true on every instance."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _background(self, work: Awaitable[object]) -> None:
        """Run ``work`` without waiting for it (from a synchronous ending); errors are logged."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background line update failed: %s", exc)

    # -- endings -------------------------------------------------------------------

    def _start_ticket(self, ticket: Ticket) -> None:
        if ticket.expiry_timer is not None:
            ticket.expiry_timer.cancel()
            ticket.expiry_timer = None
        ticket.start()
        for listener in self.listeners:
            listener.started(ticket)
        event = ticket.events.publish(PROCESSING, {"request_id": ticket.id})
        if self.places is not None:
            self._background(self.places.record(ticket, None, event_id=event.id))

    def _complete_payload(self, ticket: Ticket) -> dict[str, Any]:
        return {
            "request_id": ticket.id,
            "answer": ticket.answer,
            "suggested_questions": ticket.suggested_questions,
            "cached": ticket.cached,
        }

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
        self._notify_status()
        if ticket.flight is not None:
            self._leave_flight(ticket, ticket.flight)
        if event == WORKFLOW_COMPLETE:
            payload["duration_ms"] = round(ticket.duration_ms or 0.0, 1)
        ticket.events.publish(event, payload)
        self.per_client[ticket.client] -= 1
        if self.per_client[ticket.client] <= 0:
            del self.per_client[ticket.client]
        if self.places is not None:
            self._background(self.places.give_back_client_slot(ticket.client))
        self.registry.finished(ticket)
        for listener in self.listeners:
            listener.ended(ticket)
        if self.places is not None:
            # Its streams send the ending once this lands: a guest that saw it and resumes on
            # another instance finds it over there too (web/stream.py).
            ticket.ending_written = written = self.places.record(ticket, None)
            self._background(written)
        logger.info(
            "request %s %s%s wait=%.0fms run=%.0fms",
            ticket.id,
            status.value,
            f" ({code})" if code else "",
            ticket.wait_ms or 0,
            ticket.duration_ms or 0,
        )
        return True

    async def _watch_streams(self) -> None:
        """One pass over the open streams, several times a second: quiet ones send a ping (which
        keeps proxies from timing them out), sends stuck past the send timeout are let go."""
        settings = self.settings
        every_s = min(1.0, settings.send_timeout_s / 4, *([settings.ping_s / 2] if settings.ping_s > 0 else []))
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic()  # the clock web/stream.py times its sends on (real sockets: real time)
            for stream in list(self.streams):
                stream.check(now)

    def _notify_status(self) -> None:
        # set() wakes every current waiter; clear() at once makes later waits block again.
        self._status_changed.set()
        self._status_changed.clear()

    async def status_changed(self) -> None:
        """Return at the next admission, start or end (for monitors' live status)."""
        await self._status_changed.wait()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
