"""The monitors' live status stream (sse-starlette) and the dashboard's samples."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
from httpx_sse import aconnect_sse

from .conftest import MockUpstream, serve, wait_until
from .support.programs import node


async def test_the_status_stream_sends_at_once_on_a_change_and_ends_on_shutdown(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(delay=0.3)) as running, httpx.AsyncClient(timeout=30) as client:
        statuses: list[tuple[float, dict[str, int]]] = []
        async with aconnect_sse(client, "GET", f"{running.base}/queue/status/stream") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.aiter_sse()
            first = await anext(events)
            assert first.event == "status" and json.loads(first.data)["active_requests"] == 0
            asked = time.monotonic()
            question = asyncio.create_task(client.post(f"{running.base}/chat/simple", json={"query": "q"}))
            async for sse in events:
                statuses.append((time.monotonic() - asked, json.loads(sse.data)))
                if statuses[-1][1]["active_requests"] == 1:
                    break
            assert statuses[-1][0] < 0.7, "a change is sent at once, not at the next second"
            await question
            running.guest.request_shutdown()
            rest = [json.loads(sse.data) async for sse in events]  # the stream ends by itself
        assert rest, "the final status before the end"


async def test_an_eventsource_monitor_reads_the_status_stream() -> None:
    async with serve() as running:
        result = await node("eventsource_status.mjs", f"{running.base}/queue/status/stream", "3")
    statuses = result["statuses"]
    assert [s["status"]["queue_size"] for s in statuses] == [0, 0, 0]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(statuses)]
    assert all(500 < gap < 2500 for gap in gaps), f"about once a second when nothing changes: {gaps}"


async def test_samples_of_the_last_minutes_for_the_dashboard() -> None:
    async with serve() as running, httpx.AsyncClient(timeout=10) as client:
        monitor = running.guest.monitor
        assert monitor is not None
        await wait_until(lambda: len(monitor.samples()["samples"]) >= 3, 5, "three samples")
        body = (await client.get(f"{running.base}/queue/status/samples")).json()
    assert body["interval_sec"] == 1
    samples = body["samples"]
    assert set(samples[0]) == {"t", "queue_size", "active_requests", "completed_requests"}
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert 0.5 < samples[1]["t"] - samples[0]["t"] < 1.5
