"""The worker pool: N workers take tickets from the line and run them upstream.

Each ticket runs as its own job task so that one guest's cancel, disconnect
or wait limit cancels exactly that job. A job waits for the pacing limiter
(the ticket is still position 1 meanwhile), starts, streams the upstream's
chunks into the ticket's event log under the processing time limit, and
retries a failed call only while no chunk has been sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

from .errors import UpstreamError, UpstreamFailure
from .events import ANSWER_CHUNK
from .tickets import Status, Ticket
from .upstream import Upstream, WorkflowRequest

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
        self.active: dict[str, Ticket] = {}
        self.upstream_calls: Counter[str] = Counter()

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
            ticket = await line.next()
            job = asyncio.create_task(self._run(ticket), name=f"guestqueue-job-{ticket.id[:8]}")
            ticket.job = job
            try:
                await asyncio.wait({job})
            finally:
                # A job cancelled before it ever ran never reached its own handler.
                if not ticket.done:
                    self._service.end_cancelled_job(ticket)
                ticket.job = None

    async def _run(self, ticket: Ticket) -> None:
        service = self._service
        try:
            await service.limiter.acquire()
            service.on_started(ticket)
            self.active[ticket.id] = ticket
            try:
                async with asyncio.timeout(self._settings.request_timeout_s):
                    await self._call_upstream(ticket)
            except TimeoutError:
                self.upstream_calls["timeout"] += 1
                service.end_timeout(ticket)
                return
            service.end_completed(ticket)
        except UpstreamFailure as exc:
            logger.warning("request %s upstream failure: %s", ticket.id, exc.detail)
            service.end_error(ticket, Status.FAILED, exc.code, exc.guest_message, detail=exc.detail)
        except asyncio.CancelledError:
            service.end_cancelled_job(ticket)
            raise
        except Exception:
            logger.exception("request %s failed inside guestqueue", ticket.id)
            service.end_error(ticket, Status.FAILED, "internal_error", "Something went wrong on our side.")
        finally:
            self.active.pop(ticket.id, None)

    async def _call_upstream(self, ticket: Ticket) -> None:
        request = WorkflowRequest(ticket.id, ticket.query, ticket.parameters, ticket.session_id)
        attempt = 0
        while True:
            try:
                async for chunk in self._upstream.stream(request):
                    if chunk.suggested_questions is not None:
                        ticket.suggested_questions = chunk.suggested_questions
                    if chunk.text:
                        ticket.answer_parts.append(chunk.text)
                        ticket.events.publish(ANSWER_CHUNK, chunk.text)
                if not ticket.answer_parts:
                    raise UpstreamError("The assistant returned an empty answer. Please try again.")
                self.upstream_calls["ok"] += 1
                return
            except UpstreamFailure as exc:
                self.upstream_calls[exc.code] += 1
                # Once a guest has seen part of an answer, a retry would repeat or contradict it.
                if ticket.answer_parts or not exc.retryable or attempt >= self._settings.upstream_retries:
                    raise
                attempt += 1
                if exc.retry_after_s is not None:
                    self._service.limiter.hold_until(exc.retry_after_s)
                logger.info("request %s retry %d after: %s", ticket.id, attempt, exc.detail)
                await asyncio.sleep(backoff_s(attempt))
                await self._service.limiter.acquire()  # a retry is a new upstream start
