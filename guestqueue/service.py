"""The running queue: admission, the line, the workers, and every way a request ends.

A :class:`QueueService` is created in the app's lifespan and owns all state;
nothing lives in module globals, so two apps can run side by side. Every
admitted ticket ends exactly once, through :meth:`QueueService._end`, which
emits the one terminal event and does the bookkeeping synchronously (so
cancellation cannot interrupt it half-way).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from typing import Any

from .config import Settings
from .errors import ClientLimit, LineFull, ShuttingDown
from .eta import WaitEstimator
from .events import ERROR, PROCESSING, QUEUED, TIMEOUT, WORKFLOW_COMPLETE
from .history import Registry, Stats
from .limiter import PacingLimiter
from .line import WaitingLine
from .tickets import Status, Ticket
from .upstream import Upstream
from .workers import WorkerPool

logger = logging.getLogger("guestqueue")

TIMEOUT_FALLBACK = (
    "Sorry, this is taking longer than expected. Please try again in a moment, or rephrase your question."
)


class QueueService:
    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.stats = Stats()
        self.registry = Registry(settings.history_size)
        self.line = WaitingLine(settings.max_queue_size, on_moved=self._publish_positions)
        self.limiter = PacingLimiter(settings.upstream_interval_s)
        self.estimator = WaitEstimator(
            settings.max_concurrent_requests, settings.upstream_interval_s, self._eta_snapshot
        )
        self.pool = WorkerPool(self, upstream)
        self.per_client: Counter[str] = Counter()
        self.accepting = True
        self._ticker: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"QueueService(queued={len(self.line)}, active={len(self.pool.active)}, "
            f"total={self.stats.total_requests}, upstream={self.upstream.kind})"
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.pool.start()
        self._ticker = asyncio.create_task(self._tick_positions(), name="guestqueue-positions")

    def begin_shutdown(self) -> None:
        """Stop admitting now and drain in the background (see :meth:`stop`)."""
        self.accepting = False
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def stop(self) -> None:
        """Stop admitting, let running work finish for the shutdown grace, then end everything else."""
        self.begin_shutdown()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self.pool.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        remaining = [*self.line.tickets(), *self.pool.active.values()]
        jobs = [ticket.job for ticket in remaining if ticket.job is not None]
        for ticket in remaining:
            self.cancel(ticket, Status.FAILED, "shutdown", "The service is restarting. Please ask again shortly.")
        await asyncio.gather(*jobs, return_exceptions=True)
        await self.pool.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    # -- admission -----------------------------------------------------------------

    def submit(
        self, query: str, *, client: str, parameters: dict[str, Any] | None = None, session_id: str | None = None
    ) -> Ticket:
        """Admit a request to the line, or raise a :class:`~guestqueue.errors.Rejected`."""
        if not self.accepting:
            raise ShuttingDown("The service is restarting. Please try again shortly.")
        if self.per_client[client] >= self.settings.max_per_client:
            self.stats.rejected_requests += 1
            raise ClientLimit(
                f"You already have {self.per_client[client]} questions in progress. "
                "Please wait for an answer before asking more.",
                retry_after_s=self._retry_after_s(1),
            )
        ticket = Ticket(query, client, parameters or {}, session_id)
        try:
            self.line.admit(ticket)
        except LineFull as exc:
            self.stats.rejected_requests += 1
            exc.retry_after_s = self._retry_after_s(self.settings.max_queue_size + 1)
            raise
        self.stats.total_requests += 1
        self.per_client[client] += 1
        self.registry.add(ticket)
        loop = asyncio.get_running_loop()
        ticket.expiry_timer = loop.call_later(self.settings.max_wait_s, self._expire, ticket)
        self._publish_position(ticket)
        return ticket

    def _retry_after_s(self, position: int) -> int:
        return max(1, math.ceil(self.estimator.estimate_s(position)))

    # -- guests coming and going ---------------------------------------------------

    def subscribe(self, ticket: Ticket) -> None:
        ticket.subscribers += 1
        if ticket.grace_timer is not None:
            ticket.grace_timer.cancel()
            ticket.grace_timer = None

    def unsubscribe(self, ticket: Ticket) -> None:
        ticket.subscribers -= 1
        if ticket.subscribers == 0 and not ticket.done:
            loop = asyncio.get_running_loop()
            ticket.grace_timer = loop.call_later(self.settings.reconnect_grace_s, self._abandon, ticket)

    def _abandon(self, ticket: Ticket) -> None:
        ticket.grace_timer = None
        if ticket.subscribers == 0:
            self.cancel(ticket, Status.CANCELLED, "disconnected", "The guest disconnected.")

    def _expire(self, ticket: Ticket) -> None:
        ticket.expiry_timer = None
        if ticket.status is Status.QUEUED:
            self.cancel(
                ticket, Status.CANCELLED, "wait_timeout", "The line is moving slowly today. Please try again later."
            )

    def cancel(self, ticket: Ticket, status: Status, code: str, message: str) -> bool:
        """End a ticket early: leave the line, or stop its job. False if it had already ended."""
        if ticket.done:
            return False
        job = ticket.job
        if job is not None and not job.done():
            # Held by a worker (pacing wait or processing): the job ends it on cancellation.
            ticket.cancel_reason = (status, code, message)
            job.cancel()
            return True
        return self.end_error(ticket, status, code, message)

    # -- hooks for the workers ---------------------------------------------------

    def on_started(self, ticket: Ticket) -> None:
        if ticket.expiry_timer is not None:
            ticket.expiry_timer.cancel()
            ticket.expiry_timer = None
        self.line.started(ticket)
        ticket.start()
        self.estimator.invalidate()
        ticket.events.publish(PROCESSING, {"request_id": ticket.id})

    def end_completed(self, ticket: Ticket) -> bool:
        payload = {"request_id": ticket.id, "answer": ticket.answer, "suggested_questions": ticket.suggested_questions,
                   "cached": ticket.cached}
        return self._end(ticket, Status.COMPLETED, WORKFLOW_COMPLETE, payload)

    def end_timeout(self, ticket: Ticket) -> bool:
        error = f"No answer within {self.settings.request_timeout_s:g} seconds."
        payload = {"request_id": ticket.id, "error": error, "fallback": TIMEOUT_FALLBACK}
        return self._end(ticket, Status.TIMEOUT, TIMEOUT, payload, error=error, code="timeout")

    def end_error(self, ticket: Ticket, status: Status, code: str, message: str, *, detail: str | None = None) -> bool:
        payload = {"request_id": ticket.id, "error": message, "code": code}
        return self._end(ticket, status, ERROR, payload, error=detail or message, code=code)

    def end_cancelled_job(self, ticket: Ticket) -> bool:
        status, code, message = ticket.cancel_reason or (
            Status.FAILED, "internal_error", "The request was stopped unexpectedly."
        )
        return self.end_error(ticket, status, code, message)

    def _end(
        self, ticket: Ticket, status: Status, event: str, payload: dict[str, Any],
        *, error: str | None = None, code: str | None = None,
    ) -> bool:
        was_queued = ticket.status is Status.QUEUED
        if not ticket.end(status, error=error, error_code=code):
            return False
        if was_queued:
            self.line.leave(ticket)
        if event == WORKFLOW_COMPLETE:
            payload["duration_ms"] = round(ticket.duration_ms or 0.0, 1)
        ticket.events.publish(event, payload)
        self.per_client[ticket.client] -= 1
        if self.per_client[ticket.client] <= 0:
            del self.per_client[ticket.client]
        self.stats.record_end(ticket)
        if status in (Status.COMPLETED, Status.TIMEOUT) and ticket.duration_ms is not None and not ticket.cached:
            self.estimator.record(ticket.duration_ms / 1000)
        self.estimator.invalidate()
        self.registry.finished(ticket)
        logger.info(
            "request %s %s%s wait=%.0fms run=%.0fms",
            ticket.id, status.value, f" ({code})" if code else "", ticket.wait_ms or 0, ticket.duration_ms or 0,
        )
        return True

    # -- positions -----------------------------------------------------------------

    def _eta_snapshot(self) -> tuple[list[float], float]:
        now = time.monotonic()
        elapsed = [now - t.started_mono for t in self.pool.active.values() if t.started_mono is not None]
        return elapsed, self.limiter.delay_s()

    def _publish_position(self, ticket: Ticket) -> None:
        position = ticket.position
        ticket.events.publish(QUEUED, {
            "request_id": ticket.id,
            "queue_position": position,
            "total_ahead": position - 1,
            "queue_size": len(self.line),
            "estimated_wait_sec": round(self.estimator.estimate_s(position), 1),
        })

    def _publish_positions(self, moved: list[Ticket]) -> None:
        self.estimator.invalidate()
        for ticket in moved:
            if ticket.status is Status.QUEUED:
                self._publish_position(ticket)

    async def _tick_positions(self) -> None:
        """Every waiting guest hears its place at least every ``position_update_s``."""
        loop = asyncio.get_running_loop()
        interval_s = self.settings.position_update_s
        due = loop.time() + interval_s
        while True:
            # A fixed cadence: sleeping a full interval after each round would let the
            # round's own duration (~0.15 s at 10 000 guests) stretch every gap past it.
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + interval_s, loop.time())
            self.estimator.invalidate()
            for ticket in self.line.tickets():
                self._publish_position(ticket)

    def snapshot(self) -> dict[str, Any]:
        """The body of ``/queue/status``."""
        return {
            "queue_size": len(self.line),
            "active_requests": len(self.pool.active),
            "max_concurrent": self.settings.max_concurrent_requests,
            "max_queue_size": self.settings.max_queue_size,
            **self.stats.as_dict(),
        }
