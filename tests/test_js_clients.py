"""Third-party SSE clients from npm, run by Node against a real guestqueue: what frontend
developers use, not our own client. tests/js/package.json pins them (`npm ci --prefix tests/js`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from .conftest import MockUpstream, serve, stream_events
from .support.instances import shared_instances
from .support.programs import node, run_nginx


async def test_fetch_event_source_retrying_a_dropped_post_resumes_without_duplicates(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=6, delay=0.1)
    async with serve(upstream_url=url, reconnect_grace_s=5) as running:
        result = await node("fetch_event_source_resume.mjs", running.base)
        assert running.service.stats.total_requests == 1, "the retried POST is the same request"
    assert result["posts"] == 2, result
    chunks = [e["data"] for e in result["events"] if e["event"] == "answer_chunk"]
    assert chunks == [f"chunk{i} " for i in range(6)], "every chunk once, in order"
    ids = [int(e["id"]) for e in result["events"]]
    assert ids == sorted(set(ids)), "event ids increase across the retry"
    assert result["events"][-1]["event"] == "workflow_complete"
    assert len(await upstream.acalls(tag)) == 1


async def test_eventsource_that_does_not_close_stops_at_the_204(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(chunks=2)) as running, httpx.AsyncClient(timeout=30) as client:
        done = await stream_events(client, f"{running.base}/chat", json={"query": "q"})
        request_id = done[-1].data["request_id"]
        # The default reconnection delay is 3 s: 8 s would see two more attempts on an empty 200.
        result = await node("eventsource_204.mjs", f"{running.base}/chat/{request_id}/events", "8000")
    assert [e["event"] for e in result["events"]][-1] == "workflow_complete"
    assert result["connects"] == 2, result
    assert result["readyState"] == 2, "CLOSED: the 204 ended it"


async def test_the_openai_javascript_sdk_streams_the_same_answer_as_chat(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(chunks=4)) as running, httpx.AsyncClient(timeout=30) as client:
        chat = await stream_events(client, f"{running.base}/chat", json={"query": "same question"})
        result = await node("openai_sdk.mjs", running.base.removesuffix("/api/v1/guest") + "/v1", "answer")
    assert result["streamed"] == result["whole"] == chat[-1].data["answer"]
    assert result["finish"] == ["stop"] and result["models"] == ["guest"]


async def test_the_openai_javascript_sdk_sees_a_full_line_as_a_rate_limit_error(upstream: MockUpstream) -> None:
    # The line stays full (one running, one waiting) far longer than Node takes to start on a loaded machine.
    async with (
        serve(upstream_url=upstream.url(chunks=2, delay=20), max_concurrent_requests=1, max_queue_size=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        busy = [
            asyncio.create_task(stream_events(client, f"{running.base}/chat", json={"query": f"f{n}"}))
            for n in range(2)
        ]
        while len(running.service.waiting) < 1:
            await asyncio.sleep(0.02)
        result = await node("openai_sdk.mjs", running.base.removesuffix("/api/v1/guest") + "/v1", "limited")
        for guest in busy:
            guest.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    assert result["rateLimit"] is True and result["status"] == 429, result
    assert result["code"] == "rate_limit_exceeded" and int(result["retryAfterMs"]) >= 1000


async def test_eventsource_following_after_the_end_behind_nginx_hears_the_ending_once(
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """Issue 21 point 1, as seen on main: two instances behind the repo's nginx.conf (round-robin),
    the `eventsource` client following a finished request and not closing; its reconnection with
    Last-Event-ID reached the other instance, which sent the ending again under a new id. 20 runs,
    at once: every one hears `workflow_complete` once and is stopped by a 204."""

    for one, two in shared_instances(tmp_path, 2, redis_url, redis_prefix, upstream_url=upstream.url(chunks=2)):
        async with httpx.AsyncClient(timeout=30) as client:
            ids = [
                (await stream_events(client, f"{one}/chat", json={"query": f"q{n}"}))[-1].data["request_id"]
                for n in range(20)
            ]
        with run_nginx(tmp_path, one, read_timeout=None, more=(two,)) as proxied:
            # The default reconnection delay is 3 s: 4.5 s sees the reconnection and its answer.
            results = await asyncio.gather(
                *(node("eventsource_204.mjs", f"{proxied}/chat/{request_id}/events", "4500") for request_id in ids)
            )
    for result in results:
        endings = [e for e in result["events"] if e["event"] == "workflow_complete"]
        assert len(endings) == 1, result
        assert result["connects"] == 2 and result["readyState"] == 2, result
