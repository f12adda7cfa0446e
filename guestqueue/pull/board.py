"""A pull line's job board (seed 002's receive / visibility timeout / receipt handle, SQS style).

A line with ``upstream_kind = "pull"`` has no upstream address: remote workers
(GPU boxes behind NAT) come for its jobs. The line runs as any other: a flight
that gets its slot and pacing turn is *offered* here (pull/upstream.py); a
worker's ``receive`` takes offered jobs in line order and gets one *receipt*
per job, good for the visibility timeout. With the receipt the worker sends
chunks, then ``complete`` or ``fail``, and may ``extend`` the lease. Every such
report reaches the job's owner (the instance running the flight) in order.

A worker may say where its chunks go (``offset``: the index of the first one in
the answer; for ``complete``, the answer's length): chunks the job already has
are skipped, so a post sent again after an error repeats nothing, and a gap is
refused with the offset to send from (:class:`~guestqueue.errors.OffsetMismatch`).

A lease that runs out puts an ``expired`` report in the job's reports; the
owner decides (put it back at the front, or end the guest's answer
``interrupted`` once a chunk was sent), and the receipt is dead from then on:
a late report gets 410.

A job taken by a long poll whose worker had already gone (the connection
closed) is *released*: its lease runs out at once and the job is offered again
(web/jobs.py). The board keeps when a worker last asked for jobs or reported:
after ``NO_WORKER_AFTER_S`` with nobody asking and no lease held, the line's
waiting guests and ``/health`` are told no worker is there
(:meth:`JobBoard.worker_absent_s`). When the server stops, long polls end at
once with no jobs (:meth:`JobBoard.stop_receiving`).

In memory (one process) the board is a few dicts and timers. With Redis
(:class:`~guestqueue.pull.redisboard.RedisJobBoard`) it is shared: any
instance's worker API can hand out any instance's jobs, and reports travel
through a Redis stream per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import clock
from ..errors import OffsetMismatch, ReceiptGone
from ..upstream.base import WorkflowRequest

REPORTS = ("taken", "chunks", "complete", "fail", "expired")  # what a job's owner hears
NO_WORKER_AFTER_S = 10.0  # a worker long-polls at most 20 s at a time and asks again at once
GONE = "This receipt is not valid any more: its lease ran out (the job went to another worker) or the job ended."


@dataclass(frozen=True, slots=True)
class Report:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Job:
    """One flight's call, as a worker sees it."""

    id: str
    request: WorkflowRequest
    receive_count: int = 0
    receipt: str | None = None
    reports: asyncio.Queue[Report] = field(default_factory=asyncio.Queue)
    lease: asyncio.TimerHandle | None = None
    lease_ms: int = 0  # the visibility timeout given at receive (a shared board restores it)
    heard: int = 0  # chunks of the current receipt its owner has read (a shared board restores it)
    accepted: int = 0  # chunks of the current receipt taken from the worker (the memory board's offset)

    def offer(self, receipt: str) -> dict[str, Any]:
        """What ``receive`` returns for this job."""
        request = self.request
        return {
            "job_id": self.id,
            "receipt": receipt,
            "receive_count": self.receive_count,
            "request": {
                "query": request.query,
                "parameters": dict(request.parameters),
                "session_id": request.session_id,
            },
        }


class JobBoard(Protocol):
    async def offer(self, job: Job, *, front: bool = False) -> None: ...

    async def withdraw(self, job: Job) -> None: ...

    async def next_report(self, job: Job) -> Report: ...

    async def receive(
        self, max_jobs: int, wait_s: float, visibility_s: float, *, gone: asyncio.Event | None = None
    ) -> list[dict[str, Any]]:
        """Jobs in line order, waiting up to ``wait_s`` for one; none once ``gone`` is set (the
        worker's connection closed) or the board stops receiving."""
        ...

    async def release(self, receipt: str) -> None:
        """The worker never got the job (its long poll had closed): the lease runs out now."""
        ...

    def stop_receiving(self) -> None:
        """The server stops: every long poll ends now with no jobs, and so does every later one."""
        ...

    def wake(self) -> None:
        """Every long poll of this process looks again now (one of them was hung up)."""
        ...

    def worker_absent_s(self) -> float | None:
        """Seconds since a worker last asked for jobs or reported, once that is
        ``NO_WORKER_AFTER_S`` or more with no lease held; else None (or not known)."""
        ...

    async def report(self, receipt: str, report: Report, *, offset: int | None = None) -> int:
        """Pass a worker's report on; the answer's next offset (chunks taken so far) comes back."""
        ...

    async def extend(self, receipt: str, visibility_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryJobBoard:
    def __init__(self, line: str) -> None:
        self._line = line
        self._offers: deque[Job] = deque()
        self._leased: dict[str, Job] = {}  # by receipt
        self._offered = asyncio.Event()
        self._stopped = asyncio.Event()
        self._presence = WorkerPresence()

    def __repr__(self) -> str:
        return f"MemoryJobBoard(offered={len(self._offers)}, leased={len(self._leased)})"

    async def offer(self, job: Job, *, front: bool = False) -> None:
        (self._offers.appendleft if front else self._offers.append)(job)
        self._offered.set()

    async def withdraw(self, job: Job) -> None:
        """The flight ended (answered, timed out, its guests left): its receipt dies with it."""
        if job in self._offers:
            self._offers.remove(job)
        self._end_lease(job)

    async def next_report(self, job: Job) -> Report:
        return await job.reports.get()

    async def receive(
        self, max_jobs: int, wait_s: float, visibility_s: float, *, gone: asyncio.Event | None = None
    ) -> list[dict[str, Any]]:
        with self._presence.asking():
            return await self._receive(max_jobs, wait_s, visibility_s, gone)

    async def _receive(
        self, max_jobs: int, wait_s: float, visibility_s: float, gone: asyncio.Event | None
    ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        stops = [self._stopped] if gone is None else [self._stopped, gone]
        while not self._offers:
            self._offered.clear()
            remaining = deadline - loop.time()
            if remaining <= 0 or any(stop.is_set() for stop in stops):
                return []
            await nap(self._offered, remaining)
        if any(stop.is_set() for stop in stops):
            return []
        taken: list[dict[str, Any]] = []
        while self._offers and len(taken) < max_jobs:
            job = self._offers.popleft()
            receipt = new_receipt(self._line)
            job.receive_count += 1
            job.receipt, job.accepted = receipt, 0
            job.lease = loop.call_later(visibility_s, self._expire, job, receipt)
            self._leased[receipt] = job
            job.reports.put_nowait(Report("taken"))
            taken.append(job.offer(receipt))
        return taken

    def _expire(self, job: Job, receipt: str) -> None:
        if self._leased.get(receipt) is job:
            self._end_lease(job)
            job.reports.put_nowait(Report("expired"))

    def _end_lease(self, job: Job) -> None:
        if job.receipt is not None:
            self._leased.pop(job.receipt, None)
        if job.lease is not None:
            job.lease.cancel()
        job.receipt, job.lease = None, None

    def _leased_job(self, receipt: str) -> Job:
        job = self._leased.get(receipt)
        if job is None:
            raise ReceiptGone(GONE)
        return job

    async def release(self, receipt: str) -> None:
        job = self._leased.get(receipt)
        if job is not None:
            self._expire(job, receipt)

    def stop_receiving(self) -> None:
        self._stopped.set()
        self._offered.set()

    def wake(self) -> None:
        self._offered.set()

    def worker_absent_s(self) -> float | None:
        return self._presence.absent_s(working=bool(self._leased))

    async def report(self, receipt: str, report: Report, *, offset: int | None = None) -> int:
        job = self._leased_job(receipt)
        self._presence.saw()
        if report.kind == "chunks":
            texts = new_texts(report.data["texts"], offset, job.accepted)
            if texts:
                job.accepted += len(texts)
                job.reports.put_nowait(Report("chunks", {"texts": texts}))
            return job.accepted
        if report.kind == "complete" and offset is not None and offset != job.accepted:
            raise OffsetMismatch(job.accepted)
        if report.kind in ("complete", "fail"):
            self._end_lease(job)
        job.reports.put_nowait(report)
        return job.accepted

    async def extend(self, receipt: str, visibility_s: float) -> None:
        job = self._leased_job(receipt)
        self._presence.saw()
        if job.lease is not None:
            job.lease.cancel()
        job.lease = asyncio.get_running_loop().call_later(visibility_s, self._expire, job, receipt)

    async def close(self) -> None:
        self._stopped.set()
        for job in list(self._leased.values()):
            self._end_lease(job)


class WorkerPresence:
    """When a worker was last here (it asked for jobs or reported), and whether one is asking now."""

    def __init__(self) -> None:
        self.polls = 0  # long polls waiting now
        self.seen: float | None = clock.monotonic()  # monotonic; None: not known (a shared board's Redis away)

    @contextlib.contextmanager
    def asking(self) -> Iterator[None]:
        self.polls += 1
        try:
            yield
        finally:
            self.polls -= 1
            self.saw()

    def saw(self) -> None:
        self.seen = clock.monotonic()

    def absent_s(self, *, working: bool = False) -> float | None:
        """Seconds since a worker was last here, once that is NO_WORKER_AFTER_S or more with nobody
        asking nor ``working`` (holding a lease); else None."""
        if self.polls or working or self.seen is None:
            return None
        absent_s = clock.monotonic() - self.seen
        return absent_s if absent_s >= NO_WORKER_AFTER_S else None


async def nap(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set (an offer, a stop, a hang-up: the caller looks which), or ``timeout_s``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def new_receipt(line: str) -> str:
    """``<line>.<random>``: the receipt names its line (the worker API is not under the line's path)."""
    return f"{line}.{secrets.token_urlsafe(24)}"


def receipt_line(receipt: str) -> str:
    return receipt.partition(".")[0]


def new_texts(texts: list[str], offset: int | None, accepted: int) -> list[str]:
    """The chunks of a post at ``offset`` that the answer does not have yet (its first ``accepted``).
    (scripts/jobs_report.lua says the same for the shared board.)"""
    offset = accepted if offset is None else offset
    if offset > accepted:
        raise OffsetMismatch(accepted)
    return texts[accepted - offset :]
