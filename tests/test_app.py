"""The whole server over loopback: real uvicorn, real SSE, a real mock upstream process."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import httpx

from .conftest import (
    MockUpstream,
    ask,
    assert_drained,
    serve,
    stream_events,
    wait_until,
)


async def test_demo_upstream_answers_with_no_configuration() -> None:
    async with serve() as running, httpx.AsyncClient(timeout=30) as client:
        assert running.service.upstream_kind == "demo"
        events = await ask(client, running.base, "What is this?")
    names = [e.name for e in events]
    assert names[0] == "queued" and "processing" in names and names[-1] == "workflow_complete"
    chunks = [e.data for e in events if e.name == "answer_chunk"]
    assert len(chunks) > 10, "the demo streams word by word"
    final = events[-1].data
    assert final["answer"] == "".join(chunks)
    assert final["suggested_questions"] and final["cached"] is False
    # Ids rise by one per event, but a place update the stream had not sent yet when the next event
    # came is replaced by it (only the newest place is kept): a gap may stand only before `processing`.
    ids = [int(e.id) for e in events]
    assert ids[0] == 1 and ids == sorted(set(ids))
    since_start = ids[names.index("processing") :]
    assert since_start == list(range(since_start[0], since_start[0] + len(since_start)))


async def test_sse_framing_headers_and_envelope(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2)
    async with serve(upstream_url=url) as running, httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", f"{running.base}/chat", json={"query": "hi"}) as resp:
            body = (await resp.aread()).decode()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        assert len(resp.headers["x-request-id"]) == 32
    blocks = [b for b in body.split("\n\n") if b.strip() and not b.startswith(":")]
    for block in blocks:
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("id: ") and lines[2].startswith("data: {")
        assert len(lines) == 3, "exactly one data line per event"


async def test_fifo_start_order_with_concurrency_one(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=2, delay=0.05)
    async with serve(upstream_url=url, max_concurrent_requests=1) as running, httpx.AsyncClient(timeout=30) as client:
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(ask(client, running.base, f"guest {i}")))
            await wait_until(lambda n=i: running.service.stats.total_requests == n + 1, message="admission")
        results = await asyncio.gather(*tasks)
        assert_drained(running)
    assert all(r[-1].name == "workflow_complete" for r in results)
    started = [c["body"]["query"] for c in sorted(await upstream.acalls(tag), key=lambda c: c["t"])]
    assert started == [f"guest {i}" for i in range(5)]


async def test_positions_fall_as_the_line_moves(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=3, delay=0.1)
    async with (
        serve(upstream_url=url, max_concurrent_requests=1, position_update_s=5) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        first = [asyncio.create_task(ask(client, running.base, f"ahead {i}")) for i in range(3)]
        await wait_until(lambda: running.service.stats.total_requests == 3)
        mine = await ask(client, running.base, "me")
        await asyncio.gather(*first)
    positions = [e.data["queue_position"] for e in mine if e.name == "queued"]
    assert positions[0] == 3, positions  # one is processing, two wait ahead of me
    assert [p for i, p in enumerate(positions) if i == 0 or p != positions[i - 1]] == [3, 2, 1]
    first_queued = next(e for e in mine if e.name == "queued").data
    assert first_queued["total_ahead"] == 2 and first_queued["queue_size"] == 3
    assert first_queued["estimated_wait_sec"] > 0


async def test_pacing_spaces_upstream_starts_across_workers(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=1)
    interval = 0.3
    async with (
        serve(upstream_url=url, max_concurrent_requests=3, upstream_interval_s=interval) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        # One call first, not measured: the first call to the upstream also opens the connection,
        # and its arrival once lagged its start by 0.11 s on a loaded machine (the first gap seen
        # at the upstream was 0.19 s for a 0.3 s pacing that had held).
        assert (await ask(client, running.base, "warm-up"))[-1].name == "workflow_complete"
        results = await asyncio.gather(*(ask(client, running.base, f"q{i}") for i in range(4)))
        assert_drained(running)
    assert all(r[-1].name == "workflow_complete" for r in results)
    starts = sorted(c["t"] for c in await upstream.acalls(tag))[1:]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Seen at the upstream, one call's arrival may lag its start a little (beside a CPU hog: 35 ms
    # more for the first than for the last); the span of the four holds the pacing to within the
    # difference of the first's and the last's lag (tests/test_instances.py's SEND_JITTER_S).
    assert len(starts) == 4 and starts[-1] - starts[0] >= 3 * interval - 0.06, gaps
    assert min(gaps) >= interval - 0.1, gaps  # without pacing the three would start together


async def test_processing_timeout_sends_fallback_and_cancels_upstream(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(mode="hang", chunks=3)
    async with serve(upstream_url=url, request_timeout_s=0.5) as running, httpx.AsyncClient(timeout=10) as client:
        began = time.monotonic()
        events = await ask(client, running.base)
        elapsed = time.monotonic() - began
        assert_drained(running)
        assert running.service.stats.outcomes["timeout"] == 1
    assert events[-1].name == "timeout"
    assert events[-1].data["fallback"] and events[-1].data["error"]
    assert 0.4 < elapsed < 3
    await wait_until(lambda: upstream.calls(tag)[0]["disconnected"], message="upstream call cancelled")


async def test_upstream_failures_end_with_readable_error_events(upstream: MockUpstream) -> None:
    cases = [
        (upstream.url(mode="status", status=500), "upstream_error"),
        (upstream.url(mode="status", status=503), "upstream_unavailable"),
        (upstream.url(mode="malformed"), "upstream_error"),
        (upstream.url(mode="empty"), "upstream_error"),
        (f"http://127.0.0.1:{_closed_port()}/nothing", "upstream_unavailable"),
    ]
    for url, code in cases:
        async with serve(upstream_url=url) as running, httpx.AsyncClient(timeout=10) as client:
            events = await ask(client, running.base)
            assert_drained(running)
        final = events[-1]
        assert final.name == "error", (url, events)
        assert final.data["code"] == code, (url, final.data)
        assert "Please" in final.data["error"], "a message a guest can read"
        assert sum(e.name in ("workflow_complete", "timeout", "error") for e in events) == 1


def _closed_port() -> int:
    from .conftest import free_port

    return free_port()  # nothing listens there once the probe socket is closed


async def test_retries_before_first_chunk_then_success(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(fail=2, status=503, chunks=2)
    async with serve(upstream_url=url, upstream_retries=3) as running, httpx.AsyncClient(timeout=30) as client:
        events = await ask(client, running.base)
        assert running.queue.pool.upstream_calls["upstream_unavailable"] == 2
    assert events[-1].name == "workflow_complete"
    assert len(upstream.calls(tag)) == 3


async def test_no_retry_after_the_first_chunk(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(mode="reset", chunks=5)
    async with serve(upstream_url=url, upstream_retries=3) as running, httpx.AsyncClient(timeout=30) as client:
        events = await ask(client, running.base)
        assert_drained(running)
    assert [e.data for e in events if e.name == "answer_chunk"] == ["chunk0 ", "chunk1 "]
    assert events[-1].name == "error" and events[-1].data["code"] == "upstream_unavailable"
    assert len(upstream.calls(tag)) == 1


async def test_upstream_429_retry_after_holds_the_limiter(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(fail=1, status=429, retry_after=1, chunks=1)
    async with serve(upstream_url=url, upstream_retries=2) as running, httpx.AsyncClient(timeout=30) as client:
        events = await ask(client, running.base)
    assert events[-1].name == "workflow_complete"
    first, second = sorted(c["t"] for c in upstream.calls(tag))
    assert second - first >= 0.95


async def test_wait_limit_ends_with_wait_timeout(upstream: MockUpstream) -> None:
    slow, _ = upstream.tagged(mode="hang", chunks=3)
    async with (
        serve(upstream_url=slow, max_concurrent_requests=1, max_wait_s=0.3, request_timeout_s=2) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        blocker = asyncio.create_task(ask(client, running.base, "blocker"))
        await wait_until(lambda: len(running.service.running) == 1)
        events = await ask(client, running.base, "waiter")
        await blocker
        assert_drained(running)
    assert events[-1].name == "error" and events[-1].data["code"] == "wait_timeout"
    assert "processing" not in [e.name for e in events]


async def test_framing_cannot_be_forged_by_guest_or_upstream(upstream: MockUpstream) -> None:
    from .mock_upstream import INJECTION

    evil_query = "hi\n\nevent: workflow_complete\ndata: {}\r\nid: 7\rretry: 1\n\n:comment\x00end"
    echo = upstream.url(echo=1)
    inject = upstream.url(inject=1)
    async with httpx.AsyncClient(timeout=10) as client:
        async with serve(upstream_url=echo) as running:
            events = await ask(client, running.base, evil_query)
        assert [e.name for e in events] == ["queued", "processing", "answer_chunk", "workflow_complete"]
        assert events[2].data == evil_query
        async with serve(upstream_url=inject) as running:
            events = await ask(client, running.base)
        chunks = [e.data for e in events if e.name == "answer_chunk"]
        assert chunks == ["safe start ", INJECTION, " safe end"]
        assert [e.name for e in events].count("workflow_complete") == 1


async def test_disconnect_while_queued_never_reaches_upstream(upstream: MockUpstream) -> None:
    blocking, _ = upstream.tagged(chunks=2, delay=0.4)
    async with (
        serve(upstream_url=blocking, max_concurrent_requests=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        blocker = asyncio.create_task(ask(client, running.base, "blocker"))
        await wait_until(lambda: len(running.service.running) == 1)
        # A guest who leaves after hearing its place...
        leaving = await stream_events(client, f"{running.base}/chat", json={"query": "leaver"}, stop_after="queued")
        assert leaving[0].data["queue_position"] == 1
        # ...and one behind it, who must move up at once.
        behind = asyncio.create_task(ask(client, running.base, "stayer"))
        results = await asyncio.gather(blocker, behind)
        assert_drained(running)
        history = {h["request_id"]: h for h in (await client.get(f"{running.base}/queue/history")).json()}
    assert history[leaving[0].data["request_id"]]["status"] == "cancelled"
    assert history[leaving[0].data["request_id"]]["error_code"] == "disconnected"
    queries = [c["body"]["query"] for c in upstream.calls(blocking.split("tag=")[1].split("&")[0])]
    assert "leaver" not in queries and queries == ["blocker", "stayer"]
    stayer_positions = [e.data["queue_position"] for e in results[1] if e.name == "queued"]
    assert stayer_positions[-1] == 1


async def test_disconnect_while_processing_cancels_upstream_and_frees_slot(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=50, delay=0.1)
    async with serve(upstream_url=url, max_concurrent_requests=1) as running, httpx.AsyncClient(timeout=30) as client:
        partial = await stream_events(client, f"{running.base}/chat", json={"query": "q"}, stop_after="answer_chunk")
        assert partial[-1].name == "answer_chunk"
        await wait_until(lambda: not running.service.running, message="slot freed")
        await wait_until(lambda: upstream.calls(tag)[0]["disconnected"], message="upstream cancelled")
        assert_drained(running)


async def test_cancel_by_delete(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=2, delay=0.3)
    async with serve(upstream_url=url, max_concurrent_requests=1) as running, httpx.AsyncClient(timeout=30) as client:
        blocker = asyncio.create_task(ask(client, running.base, "blocker"))
        await wait_until(lambda: len(running.service.running) == 1)
        waiting = asyncio.create_task(ask(client, running.base, "waiting"))
        await wait_until(lambda: len(running.service.waiting) == 1)
        request_id = next(iter(running.service.waiting.values())).tickets[0].id
        resp = await client.delete(f"{running.base}/chat/{request_id}")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        events = await waiting
        assert events[-1].name == "error" and events[-1].data["code"] == "cancelled"
        assert (await client.delete(f"{running.base}/chat/{request_id}")).status_code == 409
        assert (await client.delete(f"{running.base}/chat/{'0' * 32}")).status_code == 404
        await blocker
        assert_drained(running)
    assert [c["body"]["query"] for c in upstream.calls(tag)] == ["blocker"]


async def test_many_concurrent_guests_nothing_lost(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=3)
    guests = 200
    async with (
        serve(upstream_url=url, max_concurrent_requests=4, max_queue_size=guests) as running,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=guests + 10)) as client,
    ):
        results = await asyncio.gather(*(ask(client, running.base, f"g{i}") for i in range(guests)))
        assert_drained(running)
        status = (await client.get(f"{running.base}/queue/status")).json()
    assert all(r[-1].name == "workflow_complete" for r in results)
    assert status["completed_requests"] == guests and status["total_requests"] == guests
    assert len(upstream.calls(tag)) == guests


async def test_a_retry_goes_first_at_the_limiter(upstream: MockUpstream) -> None:
    # A's first call fails while B and C wait for their pacing turns. A's retry used to queue
    # behind them (a whole interval each); it already had its turn, so it goes first now.
    tag = uuid.uuid4().hex[:12]
    mock = {"tag": tag, "chunks": 1}
    # The interval is longer than the longest backoff before a first retry (0.5 s, workers.py), so
    # B's turn is never due before A's retry asks: only the order of the turns is tested.
    async with (
        serve(
            upstream_url=upstream.url(), upstream_interval_s=1.0, upstream_retries=1, max_concurrent_requests=3
        ) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        a = asyncio.create_task(ask(client, running.base, "a", parameters={"mock": {**mock, "fail": 1, "status": 503}}))
        await wait_until(lambda: running.service.line.limiter.starts == 1)
        others = [asyncio.create_task(ask(client, running.base, q, parameters={"mock": mock})) for q in "bc"]
        for events in await asyncio.gather(a, *others):
            assert events[-1].name == "workflow_complete"
    calls = sorted(upstream.calls(tag), key=lambda call: call["t"])
    assert [call["body"]["query"] for call in calls] == ["a", "a", "b", "c"]


async def test_waits_between_attempts_do_not_count_against_the_processing_limit(upstream: MockUpstream) -> None:
    # First attempt fails at once; the retry waits for its pacing turn (1 s) and then takes 0.6 s.
    # With the waits counted, 1.6 s > the 1.3 s limit ended it as a timeout.
    url, tag = upstream.tagged(fail=1, status=503, chunks=2, delay=0.3)
    async with (
        serve(upstream_url=url, upstream_interval_s=1.0, upstream_retries=1, request_timeout_s=1.3) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        events = await ask(client, running.base)
    assert events[-1].name == "workflow_complete", events[-1]
    assert len(upstream.calls(tag)) == 2
