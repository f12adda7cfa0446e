"""The worker pool: N workers take flights from the line and run them upstream.

Each flight runs as its own job task so that it can be cancelled alone (its
last guest left). A job waits for the pacing limiter (the flight is still
position 1 meanwhile), starts, streams the upstream's chunks to every guest
riding the flight under the processing time limit, and retries a failed call
only while no chunk has been sent. A retry goes first at the limiter (its
flight already had its turn), and the waits between attempts do not count
against the processing time limit, which measures the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

from .errors import UpstreamError, UpstreamFailure
from .tickets import Flight
from .upstream import Upstream, valid_text

if TYPE_CHECKING:
    from .service import QueueService

logger = logging.getLogger("guestqueue.workers")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (1, 2, ...)."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


class WorkerPool:
    def __init__(self, service: QueueService, upstream: Upstream) -> None:
        self._service = service
        self._upstream = upstream
        self._settings = service.settings
        self._workers: list[asyncio.Task[None]] = []
        self.active: dict[str, Flight] = {}
        self.upstream_calls: Counter[str] = Counter()
        self.consecutive_failures = 0

    def __repr__(self) -> str:
        return f"WorkerPool(size={len(self._workers)}, active={len(self.active)}, calls={dict(self.upstream_calls)})"

    def start(self) -> None:
        for number in range(self._settings.max_concurrent_requests):
            self._workers.append(asyncio.create_task(self._work(), name=f"guestqueue-worker-{number}"))

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def _work(self) -> None:
        line = self._service.line
        while True:
            flight = await line.next()
            job = asyncio.create_task(self._run(flight), name=f"guestqueue-job-{flight.id}")
            flight.job = job
            try:
                await asyncio.wait({job})
            finally:
                # A job cancelled before it ever ran never reached its own handler.
                if flight.tickets and not flight.finished:
                    self._service.end_flight_error(flight, "shutdown", "The request was stopped. Please try again.")

    async def _run(self, flight: Flight) -> None:
        service = self._service
        try:
            waited_s = await service.limiter.acquire()
            service.metrics.pacing_delay_seconds.observe(waited_s)
            service.on_started(flight)
            self.active[flight.id] = flight
            try:
                async with asyncio.timeout(self._settings.request_timeout_s) as deadline:
                    await self._call_upstream(flight, deadline)
            except TimeoutError:
                self._count("timeout")
                service.end_flight_timeout(flight)
                return
            service.end_flight_completed(flight)
        except UpstreamFailure as exc:
            logger.warning("flight %s upstream failure: %s", flight.id, exc.detail)
            service.end_flight_error(flight, exc.code, exc.guest_message, detail=exc.detail)
        except asyncio.CancelledError:
            if flight.tickets and not flight.finished:
                service.end_flight_error(flight, "shutdown", "The request was stopped. Please try again.")
            raise
        except Exception:
            logger.exception("flight %s failed inside guestqueue", flight.id)
            service.end_flight_error(flight, "internal_error", "Something went wrong on our side.")
        finally:
            self.active.pop(flight.id, None)

    def _count(self, result: str) -> None:
        self.upstream_calls[result] += 1
        self.consecutive_failures = 0 if result == "ok" else self.consecutive_failures + 1

    async def _call_upstream(self, flight: Flight, deadline: asyncio.Timeout) -> None:
        """Call the upstream, retrying before the first chunk. The processing time limit counts the
        upstream's time: the backoff and pacing waits between attempts move ``deadline`` on."""
        request = flight.request
        attempt = 0
        while True:
            try:
                async for chunk in self._upstream.stream(request):
                    # An upstream's "\ud800" would make every UTF-8 writer (JSON answers, SQLite) fail later.
                    if chunk.suggested_questions is not None:
                        flight.suggested_questions = [valid_text(q) for q in chunk.suggested_questions]
                    if chunk.text:
                        self._service.emit_chunk(flight, valid_text(chunk.text))
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
                    self._service.limiter.hold_until(exc.retry_after_s)
                logger.info("flight %s retry %d after: %s", flight.id, attempt, exc.detail)
                loop = asyncio.get_running_loop()
                waiting_since = loop.time()
                await asyncio.sleep(backoff_s(attempt))
                # A retry is a new upstream start, but this flight already had its turn and holds
                # its slot: it goes before the flights still waiting for theirs.
                await self._service.limiter.acquire(first=True)
                when = deadline.when()
                if when is not None:
                    deadline.reschedule(when + loop.time() - waiting_since)
