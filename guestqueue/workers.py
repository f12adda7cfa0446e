"""The worker pool: N workers take flights from the line and run them upstream.

The pool knows the line, the pacer, the upstream and a :class:`FlightSink`
(who hears what a flight does: the service, or the relay that carries it to
the instance holding the flight's guests); it imports none of them.

Each flight runs as its own job task so that it can be cancelled alone (its
last guest left). A job waits for its turn (slot and pacing; the flight is
still position 1 meanwhile), starts, streams the upstream's chunks to every guest
riding the flight under the processing time limit, and retries a failed call
only while no chunk has been sent. A retry goes first at the limiter (its
flight already had its turn), and the waits between attempts do not count
against the processing time limit, which measures the upstream.

Two kinds of line run the same way with a twist: an admission line's flight
gets a token and a session instead of a call (the ``admitter``, waitingroom/sessions.py:
the slot is the session's from then on, not given back here), and a pull
line's guests hear ``processing`` only when a remote worker takes the job
(the upstream's first chunk, pull/upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from .config import Settings
from .errors import AnswerTooLarge, LineUnavailable, UpstreamError, UpstreamFailure
from .fairness import service_of
from .lines.base import Line, Pacer
from .outbound import mask_url
from .stopping import raise_if_cancelled, stop_tasks
from .tickets import Flight
from .upstream import Upstream, valid_text
from .upstream.probe import unreachable

logger = logging.getLogger("guestqueue.workers")

MAX_SUGGESTIONS = 10
MAX_SUGGESTION_CHARS = 500
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (1, 2, ...)."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


UPSTREAM_FAILURES_DEGRADED = 3  # /health says degraded after this many failed upstream calls in a row
# An admission line's workers only hand out tokens (no call is held): this many serve any
# max_active, since the line, not the pool, counts the open sessions.
ADMITTING_WORKERS = 16
ADMIT_AT_STOP_S = 5.0  # how long a stop lets an admission under way finish


class FlightSink(Protocol):
    """Hears what a running flight does. Each ending is called at most once per flight."""

    def on_started(self, flight: Flight) -> None: ...

    def emit_chunk(self, flight: Flight, text: str) -> None: ...

    def end_flight_completed(self, flight: Flight) -> None: ...

    def end_flight_timeout(self, flight: Flight) -> None: ...

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None: ...

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None: ...

    def back_to_line(self, flight: Flight) -> bool:
        """The flight cannot go on here before it said anything (this instance stops, or its
        admission's session could not be kept): on a shared line it waits again at its place and
        another start lets it go (True: the worker puts it back); a line in one process cannot."""
        ...

    async def release(self, flight: Flight) -> None:
        """The flight's call is over and its ending told: its slot is free for the next. (A shared
        line's relay frees it in the script that sends the ending: never a free slot without an
        ending, which nobody would recover.)"""
        ...


class Admitter(Protocol):
    """An admission line's sessions (waitingroom/sessions.py): the flight's guest gets a token instead of a call,
    and its slot becomes the session's."""

    async def admit(self, flight: Flight) -> dict[str, Any]: ...


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        line: Line,
        pacer: Pacer,
        upstream: Upstream,
        sink: FlightSink,
        *,
        on_paced: Callable[[float], None] = lambda waited_s: None,
        admitter: Admitter | None = None,
    ) -> None:
        self._settings = settings
        self._line = line
        self._pacer = pacer
        self._upstream = upstream
        self._sink = sink
        self._on_paced = on_paced  # seconds each start waited for its turn (a metric)
        self._admitter = admitter  # an admission line: no upstream call
        self._workers: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[Any]] = set()  # workers waiting for a flight
        self._draining = False
        self.active: dict[str, Flight] = {}
        self.upstream_calls: Counter[str] = Counter()
        self.consecutive_failures = 0
        self.unreachable: str | None = None  # what the start-up probe found, until a call succeeds
        self._probe: asyncio.Task[None] | None = None

    def problems(self) -> list[str]:
        """What /health should say about the upstream."""
        problems = [self.unreachable] if self.unreachable is not None else []
        if self.consecutive_failures >= UPSTREAM_FAILURES_DEGRADED:
            problems.append(f"upstream failed its last {self.consecutive_failures} calls")
        return problems

    def probe(self, url: str, line: str) -> None:
        """Ask once, in the background, whether the upstream can be reached: one that cannot is named
        in the log and in /health before a guest waits for it."""
        self._probe = asyncio.create_task(self._probe_once(url, line), name="guestqueue-upstream-probe")

    async def _probe_once(self, url: str, line: str) -> None:
        problem = await unreachable(url)
        if problem is not None and not self.upstream_calls["ok"]:
            self.unreachable = f"upstream {mask_url(url)} cannot be reached: {problem}"
            logger.warning("line %s: %s", line, self.unreachable)

    def __repr__(self) -> str:
        return f"WorkerPool(size={len(self._workers)}, active={len(self.active)}, calls={dict(self.upstream_calls)})"

    def _size(self, settings: Settings) -> int:
        slots = settings.max_concurrent_requests
        return min(slots, ADMITTING_WORKERS) if self._admitter is not None else slots

    def start(self) -> None:
        for number in range(self._size(self._settings)):
            self._workers.append(asyncio.create_task(self._work(), name=f"guestqueue-worker-{number}"))

    @property
    def upstream(self) -> Upstream:
        return self._upstream

    def reconfigure(self, settings: Settings, upstream: Upstream) -> None:
        """The line's settings or upstream changed: new calls use them; more slots get more workers
        (fewer slots need no fewer: the line lets no more start)."""
        self._settings, self._upstream = settings, upstream
        for number in range(len(self._workers), self._size(settings)):
            self._workers.append(asyncio.create_task(self._work(), name=f"guestqueue-worker-{number}"))

    def drain(self) -> None:
        """Take no new flight (shutdown): idle workers stop, busy ones after their flight."""
        self._draining = True
        for worker in self._idle:
            worker.cancel()

    async def stop(self) -> None:
        await stop_tasks([*self._workers, self._probe])
        self._workers.clear()

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._draining:
            self._idle.add(me)
            try:
                flight = await self._line.next()
            except LineUnavailable:  # the shared line is unreachable: try again shortly
                raise_if_cancelled()
                await asyncio.sleep(0.5)
                continue
            finally:
                self._idle.discard(me)
            if flight.finished:  # its last guest left while the line handed it over
                continue
            job = asyncio.create_task(self._run(flight), name=f"guestqueue-job-{flight.id}")
            flight.job = job
            try:
                await asyncio.wait({job})
            except asyncio.CancelledError:  # the pool stops: the job's own handler ends its flight
                job.cancel()
                await asyncio.wait({job})
                raise
            finally:
                # A job cancelled before it ever ran never reached its own handler (one still
                # running, its admission finishing, ends its flight itself).
                if job.done() and not flight.finished:
                    self._sink.end_flight_error(flight, "shutdown", "The request was stopped. Please try again.")

    async def _run(self, flight: Flight) -> None:
        sink = self._sink
        started = False
        try:
            waited_s = await self._line.start(flight)
            started = True
            self._on_paced(waited_s)
            # A pull line's guests hear `processing` when a worker takes the job (its first chunk).
            announced = not getattr(self._upstream, "starts_when_taken", False)
            if announced:
                sink.on_started(flight)
            self.active[flight.id] = flight  # the shutdown grace waits for it
            if self._admitter is not None:
                try:
                    grant = await self._admit(flight)
                except LineUnavailable:
                    # Its session could not be opened (Redis failed, or this instance's lease ran
                    # out and the slot went back with the flight): the visitor waits again.
                    if sink.back_to_line(flight):
                        return
                    raise
                started = False  # the slot is the session's now: it is not given back here
                sink.end_flight_admitted(flight, grant)
                return
            try:
                async with asyncio.timeout(self._settings.request_timeout_s) as deadline:
                    await self._call_upstream(flight, deadline, announced)
            except TimeoutError:
                self._count("timeout")
                sink.end_flight_timeout(flight)
                return
            sink.end_flight_completed(flight)
        except LineUnavailable as exc:  # a session or a pull job could not be kept (Redis): ask again
            sink.end_flight_error(flight, "unavailable", str(exc))
        except UpstreamFailure as exc:
            logger.warning("flight %s upstream failure: %s", flight.id, exc.detail)
            sink.end_flight_error(flight, exc.code, exc.guest_message, detail=exc.detail)
        except asyncio.CancelledError:
            if not flight.finished:
                sink.end_flight_error(flight, "shutdown", "The request was stopped. Please try again.")
            raise
        except Exception:
            logger.exception("flight %s failed inside guestqueue", flight.id)
            sink.end_flight_error(flight, "internal_error", "Something went wrong on our side.")
        finally:
            self.active.pop(flight.id, None)
            if started:
                await asyncio.shield(self._finish(flight))

    async def _admit(self, flight: Flight) -> dict[str, Any]:
        """Open the flight's session. Once asked, a shared line's script runs whatever happens here:
        a stop meanwhile lets it finish (for a while), or the flight would go back in line with its
        session open, and its guest be let in twice."""
        assert self._admitter is not None
        opening = asyncio.ensure_future(self._admitter.admit(flight))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({opening}, timeout=ADMIT_AT_STOP_S)
            if not done:
                opening.cancel()
                raise
            return opening.result()

    async def _finish(self, flight: Flight) -> None:
        try:
            if flight.back_in_line:  # a shared line: another instance runs it instead
                await self._line.requeue_front(flight)
            else:
                await self._sink.release(flight)
        except LineUnavailable:
            logger.warning("flight %s: could not give its slot back (the line's lease frees it)", flight.id)
        if flight.share is None or flight.back_in_line:
            return
        try:  # a fair line: its share pays what the call cost
            await self._line.charge(flight, service_of(sum(map(len, flight.answer_parts)), flight.tokens))
        except LineUnavailable:
            logger.warning("flight %s: its share was not charged for it (Redis failed)", flight.id)

    def _count(self, result: str) -> None:
        self.upstream_calls[result] += 1
        self.consecutive_failures = 0 if result == "ok" else self.consecutive_failures + 1
        if result == "ok":
            self.unreachable = None

    async def _call_upstream(self, flight: Flight, deadline: asyncio.Timeout, announced: bool) -> None:
        """Call the upstream, retrying before the first chunk. The processing time limit counts the
        upstream's time: the backoff and pacing waits between attempts move ``deadline`` on.
        Not ``announced``: the flight's start is told at the upstream's first chunk (pull)."""
        request = flight.request
        attempt = 0
        limit = self._settings.max_answer_bytes
        while True:
            try:
                size = 0
                async for chunk in self._upstream.stream(request):
                    if not announced:
                        announced = True
                        self._sink.on_started(flight)
                    # An upstream's "\ud800" would make every UTF-8 writer (JSON answers, SQLite) fail later.
                    if chunk.suggested_questions is not None:
                        flight.suggested_questions = [
                            valid_text(q)[:MAX_SUGGESTION_CHARS] for q in chunk.suggested_questions[:MAX_SUGGESTIONS]
                        ]
                    if chunk.tokens is not None:
                        flight.tokens = chunk.tokens
                    if chunk.text:
                        text = valid_text(chunk.text)
                        size += len(text.encode())
                        if size > limit:  # leaving the loop closes the call (its generator, its connection)
                            raise AnswerTooLarge(
                                AnswerTooLarge.MESSAGE, detail=f"the answer passed max_answer_bytes={limit}"
                            )
                        self._sink.emit_chunk(flight, text)
                if not flight.answer_parts:
                    raise UpstreamError("The assistant returned an empty answer. Please try again.")
                self._count("ok")
                return
            except UpstreamFailure as exc:
                self._count(exc.code)
                # Once a guest has seen part of an answer, a retry would repeat or contradict it.
                if flight.answer_parts or not exc.retryable or attempt >= self._settings.upstream_retries:
                    raise
                attempt += 1
                if exc.retry_after_s is not None:  # held at most GUEST_UPSTREAM_MAX_HOLD_SEC (the limiter caps it)
                    await self._pacer.hold(exc.retry_after_s)
                logger.info("flight %s retry %d after: %s", flight.id, attempt, exc.detail)
                loop = asyncio.get_running_loop()
                waiting_since = loop.time()
                await asyncio.sleep(backoff_s(attempt))
                # A retry is a new upstream start, but this flight already had its turn and holds
                # its slot: it goes before the flights still waiting for theirs.
                await self._pacer.retry_turn()
                when = deadline.when()
                if when is not None:
                    deadline.reschedule(when + loop.time() - waiting_since)
