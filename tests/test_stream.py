"""Resumable streams: a guest who reconnects in time keeps its place and misses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from guestqueue import WorkflowRequest

from .conftest import MockUpstream, ask, assert_drained, serve, stream_events, wait_until


async def test_reconnect_within_grace_keeps_the_place_and_gets_every_later_event_once(
    upstream: MockUpstream,
) -> None:
    url, tag = upstream.tagged(chunks=3, delay=0.3)
    async with (
        serve(upstream_url=url, max_concurrent_requests=1, reconnect_grace_s=1.0) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        ahead = [asyncio.create_task(ask(client, running.base, f"ahead {i}")) for i in range(2)]
        await wait_until(lambda: running.service.stats.total_requests == 2)
        before = await stream_events(client, f"{running.base}/chat", json={"query": "me"}, stop_after="queued")
        request_id = before[0].data["request_id"]
        assert before[0].data["queue_position"] == 2
        await asyncio.sleep(0.3)  # disconnected, but within the grace
        ticket = running.service.registry.get(request_id)
        assert ticket is not None and not ticket.done and ticket.position in (1, 2)
        after = await stream_events(
            client, f"{running.base}/chat/{request_id}/events", method="GET", headers={"Last-Event-ID": before[-1].id}
        )
        await asyncio.gather(*ahead)
        assert_drained(running)
    ids = [int(e.id) for e in before + after]
    assert ids == sorted(set(ids)), "no event twice, in order"
    assert int(after[0].id) > int(before[-1].id)
    assert after[0].name == "queued", "still in line after reconnecting"
    assert [e.name for e in after].count("processing") == 1 and after[-1].name == "workflow_complete"
    assert [e.data for e in after if e.name == "answer_chunk"] == ["chunk0 ", "chunk1 ", "chunk2 "]
    assert [c["body"]["query"] for c in upstream.calls(tag)] == ["ahead 0", "ahead 1", "me"]


async def test_reconnect_after_grace_finds_the_request_ended(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=2, delay=0.3)
    async with (
        serve(upstream_url=url, max_concurrent_requests=1, reconnect_grace_s=0.1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        blocker = asyncio.create_task(ask(client, running.base, "blocker"))
        await wait_until(lambda: len(running.service.running) == 1)
        before = await stream_events(client, f"{running.base}/chat", json={"query": "late"}, stop_after="queued")
        request_id = before[0].data["request_id"]
        await wait_until(lambda: running.service.registry.get(request_id).done, message="grace over")
        after = await stream_events(client, f"{running.base}/chat/{request_id}/events", method="GET")
        await blocker
    assert after[-1].name == "error" and after[-1].data["code"] == "disconnected"
    assert "late" not in [c["body"]["query"] for c in upstream.calls(tag)]


async def test_request_ids_are_unguessable(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url()) as running, httpx.AsyncClient(timeout=10) as client:
        ids = [
            (await client.post(f"{running.base}/chat/simple", json={"query": f"q{i}"})).json()["request_id"]
            for i in range(20)
        ]
    assert len(set(ids)) == 20
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids), "128 random bits, hex"


async def test_quiet_streams_get_pings_and_nothing_after_the_end(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, first=1.0)  # the upstream thinks for a second before its first byte
    async with serve(upstream_url=url, ping_s=0.2) as running, httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", f"{running.base}/chat", json={"query": "slow"}) as resp:
            body = (await resp.aread()).decode()
    processing_at = body.index("event: processing")
    first_chunk_at = body.index("event: answer_chunk")
    pings_while_thinking = body.count(": ping", processing_at, first_chunk_at)
    assert pings_while_thinking >= 3, body
    assert body.rstrip("\n").endswith("}}"), "the stream ends with its terminal event"


async def test_head_on_the_events_endpoint_does_not_hang(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.5)
    async with serve(upstream_url=url) as running, httpx.AsyncClient(timeout=5) as client:
        answer = asyncio.create_task(ask(client, running.base, "q"))
        await wait_until(lambda: running.service.stats.total_requests == 1)
        request_id = next(iter(running.service.registry.live())).id
        head = await client.head(f"{running.base}/chat/{request_id}/events")
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        assert (await answer)[-1].name == "workflow_complete"


class Held:
    """A Python workflow that answers only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: WorkflowRequest) -> AsyncIterator[str]:
        await self.release.wait()
        yield "done"


async def first_event(client: httpx.AsyncClient, base: str, query: str) -> str:
    events = await stream_events(client, f"{base}/chat", json={"query": query}, stop_after="processing")
    request_id: str = events[0].data["request_id"]
    return request_id


async def test_a_last_event_id_of_4301_digits_is_ignored_not_a_500() -> None:
    # Once a 500: int() refuses more than 4 300 digits (ValueError).
    held = Held()
    async with serve(held, reconnect_grace_s=5.0) as running, httpx.AsyncClient(timeout=10) as client:
        request_id = await first_event(client, running.base, "wait")
        huge = "9" * 4301
        for url, headers in (
            (f"{running.base}/chat/{request_id}/events", {"Last-Event-ID": huge}),
            (f"{running.base}/chat/{request_id}/events?last_event_id={huge}", {}),
        ):
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200  # ignored: the stream replays from the start
        held.release.set()


async def test_one_request_has_at_most_three_open_streams_the_newest_win() -> None:
    # Once: 2 000 resume streams of one request from one client were all served (2 000 open files).
    held = Held()
    async with serve(held, reconnect_grace_s=5.0) as running, httpx.AsyncClient(timeout=10) as client:
        request_id = await first_event(client, running.base, "wait")
        url = f"{running.base}/chat/{request_id}/events"
        readers = [asyncio.ensure_future(stream_events(client, url, method="GET")) for _ in range(5)]
        await wait_until(lambda: sum(reader.done() for reader in readers) == 2, message="the two oldest ended")
        assert len(running.service.streams) == 3
        held.release.set()
        ends = [events[-1].name if events else None for events in await asyncio.gather(*readers)]
    assert ends.count("workflow_complete") == 3, "the three newest streams heard the answer"


async def test_resume_streams_count_toward_the_per_client_limit() -> None:
    held = Held()
    async with serve(held, max_per_client=1, reconnect_grace_s=5.0) as running, httpx.AsyncClient(timeout=10) as client:
        own = asyncio.ensure_future(ask(client, running.base, "mine"))  # one stream, this client's question
        others = await running.service.submit("someone else's", client="10.0.0.9")
        url = f"{running.base}/chat/{others.id}/events"
        readers = [asyncio.ensure_future(stream_events(client, url, method="GET")) for _ in range(2)]
        await wait_until(lambda: len(running.service.streams) == 3, message="three streams open")
        refused = await client.get(url)
        assert refused.status_code == 429 and refused.json()["code"] == "client_limit"
        held.release.set()
        await asyncio.gather(own, *readers)
        assert_drained(running)
