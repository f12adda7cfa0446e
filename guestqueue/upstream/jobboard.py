"""A pull line's job board (seed 002's receive / visibility timeout / receipt handle, SQS style).

A line with ``upstream_kind = "pull"`` has no upstream address: remote workers
(GPU boxes behind NAT) come for its jobs. The line runs as any other: a flight
that gets its slot and pacing turn is *offered* here (upstream/pull.py); a
worker's ``receive`` takes offered jobs in line order and gets one *receipt*
per job, good for the visibility timeout. With the receipt the worker sends
chunks, then ``complete`` or ``fail``, and may ``extend`` the lease. Every such
report reaches the job's owner (the instance running the flight) in order.

A lease that runs out puts an ``expired`` report in the job's reports; the
owner decides (put it back at the front, or end the guest's answer
``interrupted`` once a chunk was sent), and the receipt is dead from then on:
a late report gets 410.

In memory (one process) the board is a few dicts and timers. With Redis
(:class:`RedisJobBoard`) it is shared: any instance's worker API can hand out
any instance's jobs, and reports travel through a Redis stream per job.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import LineUnavailable, ReceiptGone
from ..lines.keys import Keys
from .base import WorkflowRequest

REPORTS = ("taken", "chunks", "complete", "fail", "expired")  # what a job's owner hears
GONE = "This receipt is not valid any more: its lease ran out (the job went to another worker) or the job ended."
RECEIVE_POLL_S = 0.1  # a shared board's long poll looks this often (between local wake-ups)
REPORT_BLOCK_MS = 250  # an owner's read of its job's reports wakes this often to check the lease


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

    def offer(self, receipt: str) -> dict[str, Any]:
        """What ``receive`` returns for this job."""
        request = self.request
        return {"job_id": self.id, "receipt": receipt, "receive_count": self.receive_count,
                "request": {"query": request.query, "parameters": dict(request.parameters),
                            "session_id": request.session_id}}


class JobBoard(Protocol):
    async def offer(self, job: Job, *, front: bool = False) -> None: ...

    async def withdraw(self, job: Job) -> None: ...

    async def next_report(self, job: Job) -> Report: ...

    async def receive(self, max_jobs: int, wait_s: float, visibility_s: float) -> list[dict[str, Any]]: ...

    async def report(self, receipt: str, report: Report) -> None: ...

    async def extend(self, receipt: str, visibility_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryJobBoard:
    def __init__(self, line: str) -> None:
        self._line = line
        self._offers: deque[Job] = deque()
        self._leased: dict[str, Job] = {}  # by receipt
        self._offered = asyncio.Event()

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

    async def receive(self, max_jobs: int, wait_s: float, visibility_s: float) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self._offers:
            self._offered.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._offered.wait(), remaining)
            except TimeoutError:
                return []
        taken: list[dict[str, Any]] = []
        while self._offers and len(taken) < max_jobs:
            job = self._offers.popleft()
            receipt = new_receipt(self._line)
            job.receive_count += 1
            job.receipt = receipt
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

    async def report(self, receipt: str, report: Report) -> None:
        job = self._leased_job(receipt)
        if report.kind in ("complete", "fail"):
            self._end_lease(job)
        job.reports.put_nowait(report)

    async def extend(self, receipt: str, visibility_s: float) -> None:
        job = self._leased_job(receipt)
        if job.lease is not None:
            job.lease.cancel()
        job.lease = asyncio.get_running_loop().call_later(visibility_s, self._expire, job, receipt)

    async def close(self) -> None:
        for job in list(self._leased.values()):
            self._end_lease(job)


def new_receipt(line: str) -> str:
    """``<line>.<random>``: the receipt names its line (the worker API is not under the line's path)."""
    return f"{line}.{secrets.token_urlsafe(24)}"


def receipt_line(receipt: str) -> str:
    return receipt.partition(".")[0]


# -- shared through Redis ------------------------------------------------------------

# KEYS: offers leases   ARGV: max_jobs visibility_ms prefix receipts...  -> {job_id, request_json, count}...
_RECEIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for n = 1, tonumber(ARGV[1]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local job = ARGV[3] .. ':job:' .. id
  local request = redis.call('HGET', job, 'request')
  if request then
    local receipt = ARGV[3 + n]
    local count = redis.call('HINCRBY', job, 'receive_count', 1)
    redis.call('HSET', job, 'receipt', receipt)
    redis.call('SET', ARGV[3] .. ':receipt:' .. receipt, id, 'PX', tonumber(ARGV[2]) + 86400000)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), receipt)
    redis.call('XADD', ARGV[3] .. ':job-reports:' .. id, '*', 'r', '{"kind":"taken"}')
    out[#out + 1] = id
    out[#out + 1] = request
    out[#out + 1] = count
    out[#out + 1] = receipt
  end
end
return out
"""

# A live receipt's job id, or false. KEYS: leases   ARGV: receipt prefix now
_LIVE = """
local function live(leases, receipt, prefix, now)
  local deadline = redis.call('ZSCORE', leases, receipt)
  if not deadline or tonumber(deadline) < now then return false end
  return redis.call('GET', prefix .. ':receipt:' .. receipt)
end
"""

# KEYS: leases   ARGV: receipt prefix report_json ends(0|1)  -> 1, or 0 when the receipt is dead
_REPORT = _LIVE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = live(KEYS[1], ARGV[1], ARGV[2], now)
if not id then return 0 end
redis.call('XADD', ARGV[2] .. ':job-reports:' .. id, '*', 'r', ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', ARGV[2] .. ':receipt:' .. ARGV[1])
end
return 1
"""

# KEYS: leases   ARGV: receipt prefix visibility_ms
_EXTEND = _LIVE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not live(KEYS[1], ARGV[1], ARGV[2], now) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# The owner's check of its job's lease: past its deadline, the receipt dies here, once.
# KEYS: leases   ARGV: receipt prefix  -> 1 if it just expired
_EXPIRE_IF_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) >= now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[2] .. ':receipt:' .. ARGV[1])
return 1
"""


class RedisJobBoard:
    """The board of a line shared by several instances (keys under the line's prefix)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, line: str) -> None:
        self._redis, self._keys, self._line = redis, keys, line
        self._prefix = keys.prefix  # the scripts spell the per-job and per-receipt keys from it
        self._offers_key, self._leases_key = keys.job_offers, keys.job_leases
        self._receive = redis.register_script(_RECEIVE)
        self._report = redis.register_script(_REPORT)
        self._extend = redis.register_script(_EXTEND)
        self._expire_if_due = redis.register_script(_EXPIRE_IF_DUE)
        self._read_from: dict[str, str] = {}  # job id -> last report stream id read
        self._offered = asyncio.Event()  # an offer made here: this instance's long polls look at once

    def __repr__(self) -> str:
        return f"RedisJobBoard(prefix={self._prefix!r})"

    async def offer(self, job: Job, *, front: bool = False) -> None:
        request = job.request
        payload = json.dumps({"request_id": request.request_id, "query": request.query,
                              "parameters": dict(request.parameters), "session_id": request.session_id})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.job(job.id), mapping={"request": payload})
            pipe.expire(self._keys.job(job.id), 86_400)
            pipe.expire(self._keys.job_reports(job.id), 86_400)
            (pipe.lpush if front else pipe.rpush)(self._offers_key, job.id)
            await _run(pipe.execute())
        self._read_from.setdefault(job.id, "0")
        self._offered.set()

    async def withdraw(self, job: Job) -> None:
        self._read_from.pop(job.id, None)
        receipt = await _run(self._redis.hget(self._keys.job(job.id), "receipt"))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._offers_key, 0, job.id)
            if receipt is not None:
                receipt = _text(receipt)
                pipe.zrem(self._leases_key, receipt)
                pipe.delete(self._keys.receipt(receipt))
            pipe.delete(self._keys.job(job.id), self._keys.job_reports(job.id))
            await _run(pipe.execute())

    async def next_report(self, job: Job) -> Report:
        while True:
            after = self._read_from.get(job.id, "0")
            stream: dict[Any, Any] = {self._keys.job_reports(job.id): after}  # redis-py types its keys invariantly
            reply = await _run(self._redis.xread(stream, count=1, block=REPORT_BLOCK_MS))
            if reply:
                entry_id, fields = reply[0][1][0]
                self._read_from[job.id] = _text(entry_id)
                report = json.loads(fields[b"r"])
                if report["kind"] == "taken":
                    receipt, count = await _run(self._redis.hmget(self._keys.job(job.id), ["receipt", "receive_count"]))
                    job.receipt, job.receive_count = _text(receipt or b""), int(count or 0)
                return Report(report["kind"], report.get("data") or {})
            if job.receipt and await _run(self._expire_if_due(keys=[self._leases_key],
                                                              args=[job.receipt, self._prefix])):
                job.receipt = None
                return Report("expired")

    async def receive(self, max_jobs: int, wait_s: float, visibility_s: float) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            self._offered.clear()
            receipts = [new_receipt(self._line) for _ in range(max_jobs)]
            reply = await _run(self._receive(keys=[self._offers_key, self._leases_key],
                                             args=[max_jobs, round(visibility_s * 1000), self._prefix, *receipts]))
            if reply:
                jobs = []
                for i in range(0, len(reply), 4):
                    request = json.loads(reply[i + 1])
                    jobs.append({"job_id": _text(reply[i]), "receipt": _text(reply[i + 3]),
                                 "receive_count": int(reply[i + 2]),
                                 "request": {k: request[k] for k in ("query", "parameters", "session_id")}})
                return jobs
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:  # an offer made here wakes us at once; one made elsewhere is seen within the poll
                await asyncio.wait_for(self._offered.wait(), min(RECEIVE_POLL_S, remaining))
            except TimeoutError:
                pass

    async def report(self, receipt: str, report: Report) -> None:
        body = json.dumps({"kind": report.kind, "data": report.data})
        ends = "1" if report.kind in ("complete", "fail") else "0"
        if not await _run(self._report(keys=[self._leases_key], args=[receipt, self._prefix, body, ends])):
            raise ReceiptGone(GONE)

    async def extend(self, receipt: str, visibility_s: float) -> None:
        if not await _run(self._extend(keys=[self._leases_key],
                                       args=[receipt, self._prefix, round(visibility_s * 1000)])):
            raise ReceiptGone(GONE)

    async def close(self) -> None:
        return None


async def _run(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise LineUnavailable("The line is unavailable right now. Please try again in a few seconds.") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

