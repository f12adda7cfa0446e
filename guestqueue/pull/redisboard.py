"""A pull line's job board shared by several instances through Redis (see board.py).

Keys under the line's prefix: an offers list, receipts with leases in a sorted
set (deadlines on Redis's clock), a hash and a report stream per job, and when
a worker was last seen (every ask and report sets it: each instance reads it
every ``WORKERS_LOOK_S`` to tell its guests whether a worker is there);
receipts name the line's epoch (lines/redis/line.py), which changes when Redis
forgets. The scripts are ``scripts/jobs_*.lua``.

Redis away. The job's owner (the instance running the flight) keeps the job in
memory: its request, its worker's receipt, its lease and how many chunks it has
read. While Redis cannot be reached the owner waits (the guest's answer is not
ended: the worker holding the job cannot report either, and gets 503 with
Retry-After for each report); the line's ``request_timeout_sec`` bounds the wait.
Back with its data, nothing was lost: the lease is looked at on Redis's clock
(it may have run out meanwhile: then as any lapsed lease). Back *empty* (a
restart without persistence, a ``FLUSHALL``), the owner finds its job's hash
gone and puts the job back as it knows it (``jobs_check.lua``): the receipt
with a new lease, or the offer at the front. Until then a report on a receipt
issued before Redis forgot (the receipt names its epoch) gets 503, not 410. A
restored job takes chunks only from a worker that says their ``offset``: Redis
may have lost chunks it took before the owner read them, and the worker is
asked for them again (409 with the offset) rather than the guest missing them.

Limits: a report Redis took and lost before its owner read it is lost with it
(a ``complete``: the lease then runs out, and the guest's answer ends
``interrupted``, never twice); a job taken in the instant before Redis forgot,
before its owner heard so, is offered again (the first worker's receipt answers
503 until it gives up): one more call, still one answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis

from .. import clock
from ..errors import LineUnavailable, OffsetMismatch, ReceiptGone
from ..lines.redis.boundary import call, text
from ..lines.redis.keys import Keys
from ..scripts import load_script
from ..stopping import stop_tasks
from .board import GONE, Job, Report, WorkerPresence, nap

logger = logging.getLogger("guestqueue.jobs")

RECEIVE_POLL_S = 0.1  # a long poll looks this often (between local wake-ups)
REPORT_BLOCK_MS = 250  # an owner's read of its job's reports wakes this often to check the lease
REDIS_RETRY_S = 0.5  # while Redis is away, an owner tries again this often
RETRY_AFTER_S = 1  # what a worker is told while Redis is away
WORKERS_LOOK_S = 2.0  # how often an instance reads when a worker was last seen
UNAVAILABLE = "The job board is unavailable right now (Redis). Send this again in a moment."
FORGOTTEN = "The job board lost this receipt when Redis restarted; its owner puts it back. Send this again in a moment."


def _script(redis: aioredis.Redis, name: str) -> Any:
    return redis.register_script(load_script(name))  # each includes jobs_common.lua


class RedisJobBoard:
    """The board of a line shared by several instances (keys under the line's prefix)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, line: str) -> None:
        self._redis, self._keys, self._line = redis, keys, line
        self._prefix = keys.prefix  # the scripts spell the per-job and per-receipt keys from it
        self._board_keys = [keys.job_offers, keys.job_leases, keys.epoch, keys.job_worker_seen]
        self._take = _script(redis, "jobs_receive")
        self._report = _script(redis, "jobs_report")
        self._extend = _script(redis, "jobs_extend")
        self._check = _script(redis, "jobs_check")
        self._withdraw = _script(redis, "jobs_withdraw")
        self._workers = _script(redis, "jobs_workers")
        self._read_from: dict[str, str] = {}  # job id -> last report stream id read
        self._offered = asyncio.Event()  # an offer made here: this instance's long polls look at once
        self._stopped = asyncio.Event()
        self._presence = WorkerPresence()  # this instance's polls; when any instance last saw a worker
        self._looking: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RedisJobBoard(prefix={self._prefix!r}, owned={len(self._read_from)})"

    async def offer(self, job: Job, *, front: bool = False) -> None:
        request = json.dumps(_request(job))
        away = False
        while True:  # Redis away: the flight has its slot; the line's timeout bounds the wait
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._keys.job(job.id), mapping={"request": request})
                    pipe.expire(self._keys.job(job.id), 86_400)
                    pipe.expire(self._keys.job_reports(job.id), 86_400)
                    pipe.lrem(self._keys.job_offers, 0, job.id)  # offered once, however often this is sent
                    (pipe.lpush if front else pipe.rpush)(self._keys.job_offers, job.id)
                    await _run(pipe.execute())
                break
            except LineUnavailable as exc:
                away = await _wait_for_redis(job, exc, away)
        self._read_from.setdefault(job.id, "0")
        self._offered.set()

    async def withdraw(self, job: Job) -> None:
        self._read_from.pop(job.id, None)
        try:
            await _run(self._withdraw(keys=self._board_keys, args=[self._prefix, job.id]))
        except LineUnavailable as exc:  # the job has ended here all the same; its keys expire
            logger.warning("job %s: not withdrawn from the board (%s)", job.id, exc.__cause__)

    async def next_report(self, job: Job) -> Report:
        """The job's next report. While Redis is away this waits; a job Redis forgot is put back."""
        away = False
        while True:
            try:
                report = await self._read(job)
                if report is not None:
                    return report
                state = text(await _run(self._check(keys=self._board_keys, args=self._check_args(job))))
            except LineUnavailable as exc:
                away = await _wait_for_redis(job, exc, away)
                continue
            if state == "expired":
                job.receipt = None
                return Report("expired")
            if state == "restored":
                logger.warning(
                    "job %s: Redis had forgotten it; put back (%s, %d chunks heard)",
                    job.id,
                    "its worker's receipt" if job.receipt else "offered again",
                    job.heard,
                )
                self._read_from[job.id] = "0"  # a new stream: read it from its start

    def _check_args(self, job: Job) -> list[Any]:
        return [
            self._prefix,
            job.id,
            job.receipt or "",
            job.lease_ms,
            json.dumps(_request(job)),
            job.receive_count,
            job.heard,
            secrets.token_hex(8),
        ]

    async def _read(self, job: Job) -> Report | None:
        """The next report in the job's stream, or None after REPORT_BLOCK_MS without one."""
        stream: dict[Any, Any] = {self._keys.job_reports(job.id): self._read_from.get(job.id, "0")}
        reply = await _run(self._redis.xread(stream, count=1, block=REPORT_BLOCK_MS))
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        self._read_from[job.id] = text(entry_id)
        body = json.loads(fields[b"r"])
        kind, data = body["kind"], body.get("data") or {}
        if kind == "taken":
            job.receipt, job.receive_count, job.lease_ms = (
                data["receipt"],
                int(data["receive_count"]),
                int(data["lease_ms"]),
            )
            job.heard = 0
        elif kind == "chunks":
            job.heard += len(data["texts"])
        return Report(kind, data)

    async def receive(
        self, max_jobs: int, wait_s: float, visibility_s: float, *, gone: asyncio.Event | None = None
    ) -> list[dict[str, Any]]:
        with self._presence.asking():  # (other instances hear of it from Redis)
            return await self._receive(max_jobs, wait_s, visibility_s, gone)

    async def _receive(
        self, max_jobs: int, wait_s: float, visibility_s: float, gone: asyncio.Event | None
    ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        stops = [self._stopped] if gone is None else [self._stopped, gone]
        while not any(stop.is_set() for stop in stops):
            self._offered.clear()
            randoms = [secrets.token_urlsafe(24) for _ in range(max_jobs)]
            reply = await _run(
                self._take(
                    keys=self._board_keys,
                    args=[
                        max_jobs,
                        round(visibility_s * 1000),
                        self._prefix,
                        self._line,
                        secrets.token_hex(8),
                        *randoms,
                    ],
                )
            )
            if reply:
                jobs = []
                for i in range(0, len(reply), 4):
                    request = json.loads(reply[i + 1])
                    jobs.append(
                        {
                            "job_id": text(reply[i]),
                            "receipt": text(reply[i + 3]),
                            "receive_count": int(reply[i + 2]),
                            "request": {k: request[k] for k in ("query", "parameters", "session_id")},
                        }
                    )
                return jobs
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            # An offer made here wakes us at once; one made elsewhere is seen within the poll.
            await nap(self._offered, min(RECEIVE_POLL_S, remaining))
        return []

    async def release(self, receipt: str) -> None:
        try:  # the lease ends a millisecond ago: the owner's next look offers the job again
            await _run(self._extend(keys=self._board_keys, args=[receipt, self._prefix, -1]))
        except LineUnavailable as exc:  # then the lease runs its course
            logger.warning("receipt of a closed long poll not released (%s)", exc.__cause__)

    def stop_receiving(self) -> None:
        self._stopped.set()
        self._offered.set()

    def wake(self) -> None:
        self._offered.set()

    def worker_absent_s(self) -> float | None:
        if self._looking is None and not self._stopped.is_set():
            self._looking = asyncio.create_task(self._look_for_workers(), name="guestqueue-jobs-workers")
        return self._presence.absent_s()

    async def _look_for_workers(self) -> None:
        """Every WORKERS_LOOK_S: when a worker (at any instance) last asked or reported."""
        while True:
            try:
                since_ms, leases = await self._redis_workers()
            except LineUnavailable:
                self._presence.seen = None  # Redis away: guests hear about that, not about workers
            else:
                now = clock.monotonic()
                if leases:
                    self._presence.seen = now  # someone is working on a job
                elif since_ms >= 0:
                    self._presence.seen = now - since_ms / 1000
                elif self._presence.seen is None:
                    self._presence.seen = now  # Redis forgot when: count from now
            await asyncio.sleep(WORKERS_LOOK_S)

    async def _redis_workers(self) -> tuple[int, int]:
        since_ms, leases = await _run(self._workers(keys=self._board_keys, args=[]))
        return int(since_ms), int(leases)

    async def report(self, receipt: str, report: Report, *, offset: int | None = None) -> int:
        self._presence.saw()
        texts = [json.dumps(text) for text in report.data["texts"]] if report.kind == "chunks" else []
        body = "" if report.kind == "chunks" else json.dumps({"kind": report.kind, "data": report.data})
        ends = "1" if report.kind in ("complete", "fail") else "0"
        done, taken = await _run(
            self._report(
                keys=self._board_keys,
                args=[receipt, self._prefix, report.kind, -1 if offset is None else offset, ends, body, *texts],
            )
        )
        _raise_for(int(done), int(taken))
        return int(taken)

    async def extend(self, receipt: str, visibility_s: float) -> None:
        self._presence.saw()
        done = await _run(self._extend(keys=self._board_keys, args=[receipt, self._prefix, round(visibility_s * 1000)]))
        _raise_for(int(done), 0)

    async def close(self) -> None:
        self._stopped.set()
        await stop_tasks([self._looking])


def _request(job: Job) -> dict[str, Any]:
    request = job.request
    return {
        "request_id": request.request_id,
        "query": request.query,
        "parameters": dict(request.parameters),
        "session_id": request.session_id,
    }


async def _wait_for_redis(job: Job, exc: LineUnavailable, away: bool) -> bool:
    """An owner's pause while Redis is away (said once per wait)."""
    if not away:
        logger.warning("job %s: Redis is away (%s); waiting for it", job.id, exc.__cause__)
    await asyncio.sleep(REDIS_RETRY_S)
    return True


def _raise_for(done: int, taken: int) -> None:
    """A script's verdict on a worker's report, as the worker hears it."""
    if done == 0:
        raise ReceiptGone(GONE)
    if done == -1:
        raise LineUnavailable(FORGOTTEN, retry_after_s=RETRY_AFTER_S)
    if done == -2:
        raise OffsetMismatch(taken)


async def _run(awaitable: Any) -> Any:
    """Redis failing: a worker hears 503 with Retry-After, an owner waits (lines/redis/boundary.py)."""
    return await call(awaitable, UNAVAILABLE, retry_after_s=RETRY_AFTER_S)
