"""Pull workers that are not there (issue 22, point 5): a line with no worker tells its guests and
/health so; a long poll whose worker hung up takes no job (and gives back one it took); a server
stopping ends its long polls at once. Real uvicorn over loopback, real redis-server, workers over
real HTTP, the stop with a real SIGTERM to a `guestqueue serve` process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from guestqueue.lines.redis.keys import Keys
from guestqueue.pull import board as pull_board
from guestqueue.pull.board import Job, JobBoard, MemoryJobBoard
from guestqueue.pull.redisboard import RedisJobBoard
from guestqueue.upstream.base import WorkflowRequest

from .conftest import Received, start_server_process, wait_until
from .support.lines import serve_lines
from .support.pull import PULL, follow_job, jobs_url, pull_line, receive_jobs

NO_WORKER_AFTER_S = 1.0  # the tests' threshold (10 s in production)


def _workerless(heard: list[Received]) -> list[Received]:
    return [e for e in heard if e.name == "queued" and "no_worker_sec" in e.data]


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_with_no_worker_about_queued_events_and_health_say_so_until_one_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    # Before: the guest heard `estimated_wait_sec: 0.0` once, then nothing until its timeout.
    monkeypatch.setattr(pull_board, "NO_WORKER_AFTER_S", NO_WORKER_AFTER_S)
    async with _pull_line(tmp_path, shared) as lines, httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "anyone?"}, heard))
        await wait_until(lambda: _workerless(heard), 10, "a queued event saying no worker is there")
        told = _workerless(heard)[-1].data
        assert told["queue_position"] == 1 and told["no_worker_sec"] >= NO_WORKER_AFTER_S, told
        health = await _health(client, lines)
        assert health["status"] == "degraded", health
        assert any("no pull worker has asked for jobs in" in problem for problem in health["problems"]), health
        [job] = await receive_jobs(client, lines)
        await client.post(f"{jobs_url(lines)}/{job['receipt']}/complete", json={})
        await client.post(f"{jobs_url(lines)}/{job['receipt']}/chunks", json=[])  # (410: the job ended)
        await asyncio.wait_for(asked, 10)
        health = await _health(client, lines)
        assert not any("pull worker" in problem for problem in health["problems"]), health


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_a_long_poll_whose_worker_hung_up_leaves_the_next_job_to_a_worker_that_is_there(
    tmp_path: Path, shared: bool
) -> None:
    # Before: the hung-up poll stayed open on the server and took the job; the guest sat in
    # `processing` until the 30 s lease ran out.
    async with _pull_line(tmp_path, shared) as lines, httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{lines}/gpu/jobs/receive", json={"wait_sec": 15}, timeout=0.5)
        await asyncio.sleep(0.3)  # the server hears the hang-up
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        started = time.monotonic()
        [job] = await receive_jobs(client, lines, wait_sec=10)
        assert job["receive_count"] == 1 and time.monotonic() - started < 5, job
        await client.post(f"{jobs_url(lines)}/{job['receipt']}/chunks", json=["here"])
        await client.post(f"{jobs_url(lines)}/{job['receipt']}/complete")
        await asyncio.wait_for(asked, 10)
        assert heard[-1].name == "workflow_complete" and heard[-1].data["answer"] == "here"


async def test_a_job_a_hung_up_poll_took_is_offered_again_at_once(redis_url: str, redis_prefix: str) -> None:
    # The hang-up heard only as the jobs were taken: the receipt is released, not left to its lease.
    client = aioredis.Redis.from_url(redis_url)
    boards: list[JobBoard] = [MemoryJobBoard("gpu"), RedisJobBoard(client, Keys(redis_prefix), "gpu")]
    try:
        for board in boards:
            job = Job("j1", WorkflowRequest(query="q", request_id="j1"))
            await board.offer(job)
            [taken] = await board.receive(1, 1, visibility_s=60)
            assert (await board.next_report(job)).kind == "taken"
            await board.release(taken["receipt"])
            assert (await asyncio.wait_for(board.next_report(job), 2)).kind == "expired", board
            await board.offer(job, front=True)  # what its owner (pull/upstream.py) does
            [again] = await board.receive(1, 1, visibility_s=60)
            assert again["job_id"] == "j1" and again["receive_count"] == 2, (board, again)
            await board.withdraw(job)
            await board.close()
    finally:
        await client.aclose()


def test_a_stopping_pull_server_ends_its_long_polls_at_once(tmp_path: Path) -> None:
    # Before: SIGTERM took 10-28 s with nothing running (uvicorn waited for the open long polls).
    server = start_server_process(tmp_path, GUEST_UPSTREAM_KIND="pull", GUEST_UPSTREAM_INTERVAL_SEC="0")
    base = server.base
    lines = base.removesuffix("/guest") + "/lines"

    async def stop_while_a_job_runs() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            heard: list[Received] = []
            asked = asyncio.create_task(follow_job(client, f"{base}/chat", {"query": "q"}, heard))
            [job] = (await client.post(f"{lines}/guest/jobs/receive", json={"wait_sec": 10})).json()["jobs"]
            polling = asyncio.create_task(client.post(f"{lines}/guest/jobs/receive", json={"wait_sec": 20}))
            await asyncio.sleep(1)  # the second poll is waiting on the server
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            reply = await polling
            assert reply.status_code == 200 and reply.json() == {"jobs": []}, reply.text
            assert time.monotonic() - stopped < 3, "the open long poll was held"
            # The running job keeps the server draining; a new poll is told to back off.
            late = await client.post(f"{lines}/guest/jobs/receive", json={"wait_sec": 20})
            assert late.status_code == 503 and late.json()["code"] == "shutting_down", late.text
            assert late.headers["Retry-After"] == "1"
            await client.post(f"{jobs_url(lines)}/{job['receipt']}/chunks", json=["done"])
            await client.post(f"{jobs_url(lines)}/{job['receipt']}/complete")
            await asyncio.wait_for(asked, 10)
            assert heard[-1].name == "workflow_complete" and heard[-1].data["answer"] == "done"
            answered = time.monotonic()
            await asyncio.to_thread(server.proc.wait, 20)
            assert time.monotonic() - answered < 5, "the server was slow to stop once its job was done"

    try:
        asyncio.run(stop_while_a_job_runs())
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert server.proc.returncode == 0


async def _health(client: httpx.AsyncClient, lines: str) -> dict[str, Any]:
    """The `gpu` line's part of /health."""
    reply = await client.get(lines.removesuffix("/lines") + "/guest/health")
    assert reply.status_code == 200, reply.text
    health: dict[str, Any] = reply.json()["lines"]["gpu"]
    return health


@asynccontextmanager
async def _pull_line(tmp_path: Path, shared: bool) -> AsyncIterator[str]:
    """A pull line `gpu`, alone in memory or on its own redis-server; yields the lines URL."""
    if shared:
        async with pull_line(tmp_path, "unreachable") as (_, lines, _outage):
            yield lines
    else:
        async with serve_lines(tmp_path, PULL) as (_, lines):
            yield lines
