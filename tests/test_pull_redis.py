"""A pull line's jobs when Redis goes away (issue 21, point 5): unreachable for a few seconds and
back with its data, or restarted empty (no persistence). Real redis-server, guestqueue over
uvicorn on loopback, workers over real HTTP (the test's client, or a `guestqueue worker` process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Received, wait_until
from .redis_server import RedisServer, run_redis
from .support.instances import shared_instances
from .support.pull import PULL, follow_job, jobs_url, pull_line, receive_jobs, worker_process

OUTAGE_S = 1.5  # below the instances' lease (GUEST_INSTANCE_TTL_SEC, 5 s) and the jobs' leases


async def _until_answered(post: Callable[[], Awaitable[httpx.Response]], timeout_s: float = 10) -> httpx.Response:
    """A worker's report, sent again while it is told 503 (Redis away, or the job not put back yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await post()
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        assert reply.json()["code"] == "unavailable" and int(reply.headers["Retry-After"]) >= 1
        await asyncio.sleep(0.2)


def _chunks(heard: list[Received]) -> list[str]:
    return [event.data for event in heard if event.name == "answer_chunk"]


def _calls(running: Any) -> dict[str, int]:
    return dict(running.guest.lineup.get("gpu").pool.upstream_calls)


@pytest.mark.parametrize("kind", ["unreachable", "empty"])
async def test_a_job_a_worker_holds_while_redis_is_away_is_finished_when_it_returns(tmp_path: Path, kind: str) -> None:
    async with pull_line(tmp_path, kind) as (running, lines, outage), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        [job] = await receive_jobs(client, lines, visibility_timeout_sec=10)
        url = f"{jobs_url(lines)}/{job['receipt']}"
        first = await client.post(f"{url}/chunks", params={"offset": 0}, json=["one "])
        assert first.status_code == 200, first.text
        await wait_until(lambda: _chunks(heard) == ["one "], 5, "the first chunk reached the guest")

        await outage.begin()
        away = await client.post(f"{url}/chunks", params={"offset": 1}, json=["two "])
        assert away.status_code == 503, away.text  # never a 500, never a 410 for a job still held
        assert away.json()["code"] == "unavailable" and int(away.headers["Retry-After"]) >= 1
        await asyncio.sleep(OUTAGE_S)
        assert not asked.done(), heard[-1]  # the guest still waits: no `unavailable` ending
        await outage.end()

        sent = await _until_answered(lambda: client.post(f"{url}/chunks", params={"offset": 1}, json=["two "]))
        assert sent.status_code == 200, sent.text
        done = await _until_answered(lambda: client.post(f"{url}/complete", json={"offset": 2}))
        assert done.status_code == 200, done.text
        await asyncio.wait_for(asked, 10)
        assert [e.name for e in heard].count("processing") == 1
        assert _chunks(heard) == ["one ", "two "]
        assert heard[-1].name == "workflow_complete" and heard[-1].data["answer"] == "one two "
        late = await client.post(f"{url}/chunks", json=["again"])
        assert late.status_code == 410 and late.json()["code"] == "receipt_expired"
        assert await receive_jobs(client, lines, wait_sec=0) == [], "the job is not offered a second time"
        assert _calls(running) == {"ok": 1}


@pytest.mark.parametrize("kind", ["unreachable", "empty"])
async def test_our_worker_finishes_an_answer_that_redis_interrupted(tmp_path: Path, kind: str) -> None:
    # 4.7 s alone, outage included; past the default 10 s limit once beside the whole suite.
    toml = PULL + "request_timeout_sec = 60\n"
    async with pull_line(tmp_path, kind, toml) as (running, lines, outage), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        with worker_process(tmp_path, lines.split("/api/v1/")[0], "W", "slow", visibility_s=10):
            asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
            await wait_until(lambda: len(_chunks(heard)) >= 2, 15, "the worker is answering")
            await outage.begin()
            await asyncio.sleep(OUTAGE_S)
            await outage.end()
            await asyncio.wait_for(asked, 60)
        assert heard[-1].name == "workflow_complete", heard[-1]
        assert _chunks(heard) == [f"w{n} " for n in range(12)], "every chunk once, in order"
        assert [e.name for e in heard].count("processing") == 1
        assert _calls(running) == {"ok": 1}


async def test_a_job_no_worker_had_taken_is_offered_again_after_redis_restarts_empty(tmp_path: Path) -> None:
    async with pull_line(tmp_path, "empty") as (running, lines, outage), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        await wait_until(lambda: any(e.name == "queued" for e in heard), 5, "the guest is in line")
        await asyncio.sleep(0.5)  # started: offered to the workers, none came yet
        await outage.begin()
        await asyncio.sleep(OUTAGE_S)
        await outage.end()
        [job] = await receive_jobs(client, lines, wait_sec=10)
        assert job["receive_count"] == 1 and job["request"]["query"] == "q"
        url = f"{jobs_url(lines)}/{job['receipt']}"
        assert (await client.post(f"{url}/chunks", params={"offset": 0}, json=["yes"])).status_code == 200
        assert (await client.post(f"{url}/complete", json={"offset": 1})).status_code == 200
        await asyncio.wait_for(asked, 10)
        assert heard[-1].name == "workflow_complete" and heard[-1].data["answer"] == "yes"
        assert _calls(running) == {"ok": 1}


async def test_redis_away_longer_than_the_lease_ends_the_answer_interrupted_once(tmp_path: Path) -> None:
    async with pull_line(tmp_path, "unreachable") as (_, lines, outage), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        [job] = await receive_jobs(client, lines, visibility_timeout_sec=1)
        url = f"{jobs_url(lines)}/{job['receipt']}"
        assert (await client.post(f"{url}/chunks", params={"offset": 0}, json=["half"])).status_code == 200
        await outage.begin()
        await asyncio.sleep(OUTAGE_S)  # the lease runs out meanwhile (on Redis's clock): no extend could reach it
        await outage.end()
        await asyncio.wait_for(asked, 10)
        assert [e.name for e in heard if e.name in ("error", "workflow_complete")] == ["error"]
        assert heard[-1].data["code"] == "interrupted", heard[-1]
        late = await _until_answered(lambda: client.post(f"{url}/chunks", params={"offset": 1}, json=["rest"]))
        assert late.status_code == 410 and late.json()["code"] == "receipt_expired"


async def test_after_an_empty_restart_a_worker_that_sends_no_offset_is_refused_not_trusted(tmp_path: Path) -> None:
    """Redis may have lost chunks it had taken before the owner read them: only a worker that says
    where its chunks go (``offset``) may go on; another ends the guest's answer clearly, once."""
    async with pull_line(tmp_path, "empty") as (_, lines, outage), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        [job] = await receive_jobs(client, lines, visibility_timeout_sec=2)
        url = f"{jobs_url(lines)}/{job['receipt']}"
        assert (await client.post(f"{url}/chunks", json=["one "])).status_code == 200
        await wait_until(lambda: _chunks(heard) == ["one "], 5, "the first chunk reached the guest")
        await outage.begin()
        await outage.end()
        refused = await _until_answered(lambda: client.post(f"{url}/chunks", json=["two "]))
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "offset_mismatch" and refused.json()["offset"] == 1
        await asyncio.wait_for(asked, 10)  # the worker said no more: its lease runs out
        assert [e.name for e in heard if e.name in ("error", "workflow_complete")] == ["error"]
        assert heard[-1].data["code"] == "interrupted" and _chunks(heard) == ["one "]
        assert (await client.post(f"{url}/chunks", params={"offset": 1}, json=["two "])).status_code == 410


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with run_redis() as server:
        yield server


@pytest.fixture
def two(tmp_path: Path, own_redis: RedisServer) -> Iterator[list[str]]:
    """Two guestqueue processes on ``own_redis``: their /api/v1/lines URLs."""
    config = tmp_path / "pull.toml"
    config.write_text(PULL)
    # A request may take 30 s: a Redis killed and started again mid-answer, then the rebuild, took
    # more than the tests' usual 10 s beside the suite (the answer itself takes 3 s).
    for bases in shared_instances(tmp_path, 2, own_redis.url, "pull", config=str(config), request_timeout_s=30.0):
        yield [base.removesuffix("/guest") + "/lines" for base in bases]


async def test_redis_killed_mid_answer_with_two_instances_the_guest_still_gets_it_once(
    tmp_path: Path, two: list[str], own_redis: RedisServer
) -> None:
    """The guest on one instance, our worker on the other; Redis killed and started again empty."""
    async with httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        with worker_process(tmp_path, two[1].split("/api/v1/")[0], "far", "slow", visibility_s=10):
            asked = asyncio.create_task(follow_job(client, f"{two[0]}/gpu/chat", {"query": "q"}, heard))
            await wait_until(lambda: len(_chunks(heard)) >= 2, 15, "the worker is answering")
            await asyncio.to_thread(own_redis.stop)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(own_redis.start)
            await asyncio.wait_for(asked, 45)
    assert heard[-1].name == "workflow_complete", heard[-1]
    assert _chunks(heard) == [f"w{n} " for n in range(12)], "every chunk once, in order"
    assert [e.name for e in heard].count("processing") == 1
