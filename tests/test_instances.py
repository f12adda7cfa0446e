"""Several guestqueue processes sharing one line through a real redis-server (GUEST_REDIS_URL).

Three `python -m guestqueue serve` processes, one real mock upstream, one real Redis: the
guests of all three wait in one line, in one order, paced and limited as one guestqueue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from guestqueue.config import ENV_NAMES

from .conftest import FAST, MockUpstream, Received, start_server_process, stream_events

INTERVAL_S = 0.3


def _instances(
    tmp_path: Path, count: int, redis_url: str, redis_prefix: str, **overrides: Any
) -> Iterator[list[str]]:
    settings = {**FAST, "redis_url": redis_url, "redis_prefix": redis_prefix, "instance_ttl_s": 2.0, **overrides}
    env = {ENV_NAMES[name]: str(value) for name, value in settings.items()}
    with ExitStack() as stack:
        bases = []
        for _ in range(count):
            server = start_server_process(tmp_path, **env)
            stack.callback(server.proc.wait, 15)
            stack.callback(server.proc.terminate)
            bases.append(server.base)
        yield bases


@pytest.fixture
def three(tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream) -> Iterator[list[str]]:
    yield from _instances(
        tmp_path, 3, redis_url, redis_prefix, upstream_url=upstream.url(delay=0.05),
        max_concurrent_requests=1, upstream_interval_s=INTERVAL_S, max_queue_size=50,
    )


def _body(query: str, tag: str, **mock: Any) -> dict[str, Any]:
    return {"query": query, "parameters": {"mock": {"tag": tag, **mock}}}


async def test_one_fifo_one_slot_one_pace_across_three_instances(three: list[str], upstream: MockUpstream) -> None:
    tag = "fifo-" + three[0].rsplit(":", 1)[1][:5]
    async with httpx.AsyncClient(timeout=30) as client:
        streams = []
        for n in range(6):  # admitted in this order, each on another instance than the one before
            base = three[n % 3]
            streams.append(asyncio.create_task(stream_events(client, f"{base}/chat", json=_body(f"q{n}", tag))))
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*streams)
    for n, events in enumerate(results):
        assert events[-1].name == "workflow_complete", (n, events[-1])
        assert events[-1].data["answer"] == "chunk0 chunk1 chunk2 "
    calls = await upstream.acalls(tag)
    assert [call["body"]["query"] for call in calls] == [f"q{n}" for n in range(6)], "global admission order"
    for before, after in itertools.pairwise(calls):
        assert after["t"] - before["t"] >= INTERVAL_S - 0.02, "starts paced across instances"
        assert after["t"] >= before["ended"] - 0.01, "one call at a time across instances"


async def test_positions_count_every_instances_guests(three: list[str], upstream: MockUpstream) -> None:
    tag = "positions-" + three[0].rsplit(":", 1)[1][:5]
    async with httpx.AsyncClient(timeout=30) as client:
        # The first call holds the one slot while six guests on three instances wait.
        holder = asyncio.create_task(stream_events(client, f"{three[0]}/chat", json=_body("hold", tag, delay=1.5)))
        await asyncio.sleep(0.3)
        waiting: list[asyncio.Task[list[Received]]] = []
        for n in range(6):
            url = f"{three[n % 3]}/chat"
            waiting.append(asyncio.create_task(stream_events(client, url, json=_body(f"w{n}", tag))))
            await asyncio.sleep(0.05)
        results = await asyncio.gather(holder, *waiting)
    for n, events in enumerate(results[1:], start=1):
        places = [e.data for e in events if e.name == "queued"]
        assert places[0]["queue_position"] == n, f"guest {n} joined as number {n}: {places[0]}"
        settled = [p for p in places if p["queue_size"] == 6]
        assert settled, f"guest {n} never saw the whole line of 6: {places}"
        assert all(p["queue_position"] == n and p["total_ahead"] == n - 1 for p in settled), places
        assert events[-1].name == "workflow_complete"


async def test_the_size_limit_is_global(
    tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream
) -> None:
    tag = "full-" + redis_prefix
    for bases in _instances(
        tmp_path, 2, redis_url, redis_prefix, upstream_url=upstream.url(delay=0.5), max_concurrent_requests=1,
        max_queue_size=2,
    ):
        async with httpx.AsyncClient(timeout=30) as client:
            holder = asyncio.create_task(client.post(f"{bases[0]}/chat/simple", json=_body("hold", tag)))
            await asyncio.sleep(0.3)
            two = [asyncio.create_task(client.post(f"{bases[n]}/chat/simple", json=_body(f"w{n}", tag)))
                   for n in range(2)]
            await asyncio.sleep(0.3)
            refused = await client.post(f"{bases[1]}/chat/simple", json=_body("one too many", tag))
            assert refused.status_code == 429 and refused.json()["code"] == "queue_full", refused.text
            assert int(refused.headers["retry-after"]) >= 1
            answers = await asyncio.gather(holder, *two)
            assert [a.status_code for a in answers] == [200, 200, 200]


@pytest.fixture
def two(tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream) -> Iterator[list[str]]:
    yield from _instances(
        tmp_path, 2, redis_url, redis_prefix, upstream_url=upstream.url(), max_concurrent_requests=1,
        reconnect_grace_s=5.0,
    )


async def _first_events(client: httpx.AsyncClient, url: str, count: int, **kwargs: Any) -> list[Received]:
    """The first ``count`` events of a stream, then the guest drops it."""
    events: list[Received] = []
    async with aconnect_sse(client, kwargs.pop("method", "POST"), url, **kwargs) as source:
        async for sse in source.aiter_sse():
            if sse.data:
                events.append(Received(sse.event, sse.id, json.loads(sse.data)["data"]))
            if len(events) >= count:
                break
    return events


async def test_an_answer_resumes_on_another_instance_without_a_chunk_lost_or_repeated(
    two: list[str], upstream: MockUpstream
) -> None:
    tag = "resume-" + two[0].rsplit(":", 1)[1][:5]
    async with httpx.AsyncClient(timeout=30) as client:
        body = _body("tell me", tag, chunks=8, delay=0.15)
        seen = await _first_events(client, f"{two[0]}/chat", 4, json=body)  # queued?, processing, chunks…
        request_id = seen[0].data["request_id"]
        rest = await stream_events(client, f"{two[1]}/chat/{request_id}/events", method="GET",
                                   headers={"Last-Event-ID": seen[-1].id})
    ids = [int(e.id) for e in seen + rest]
    assert ids == sorted(set(ids)), f"ids increase, none repeated: {ids}"
    chunks = [e.data for e in seen + rest if e.name == "answer_chunk"]
    assert "".join(chunks) == "".join(f"chunk{i} " for i in range(8)), chunks
    assert rest[-1].name == "workflow_complete" and rest[-1].data["answer"] == "".join(chunks)
    assert len(await upstream.acalls(tag)) == 1, "one upstream call, whichever instance the guest was on"


async def test_a_waiting_guest_keeps_its_place_on_another_instance(two: list[str], upstream: MockUpstream) -> None:
    tag = "place-" + two[0].rsplit(":", 1)[1][:5]
    async with httpx.AsyncClient(timeout=30) as client:
        holder = asyncio.create_task(stream_events(client, f"{two[0]}/chat", json=_body("hold", tag, delay=0.5)))
        await asyncio.sleep(0.3)
        second = asyncio.create_task(stream_events(client, f"{two[0]}/chat", json=_body("second", tag)))
        await asyncio.sleep(0.1)
        seen = await _first_events(client, f"{two[1]}/chat", 1, json=_body("third", tag))
        assert seen[0].name == "queued" and seen[0].data["queue_position"] == 2
        request_id = seen[0].data["request_id"]
        # Reconnect to the other instance (nginx round-robin would do the same).
        rest = await stream_events(client, f"{two[0]}/chat/{request_id}/events", method="GET",
                                   headers={"Last-Event-ID": seen[-1].id})
        await asyncio.gather(holder, second)
    assert rest[0].name == "queued" and rest[0].data["queue_position"] in (1, 2), rest[0]
    assert int(rest[0].id) > int(seen[-1].id)
    assert rest[-1].name == "workflow_complete", rest[-1]
    queries = [call["body"]["query"] for call in await upstream.acalls(tag)]
    assert queries == ["hold", "second", "third"], "its place in line was kept"
