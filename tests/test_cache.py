"""Answer cache and single-flight, over a real server."""

from __future__ import annotations

import asyncio
import time

import httpx

from guestqueue.cache import AnswerCache, normalize_query

from .conftest import MockUpstream, ask, assert_drained, serve, stream_events, wait_until


def test_keys_ignore_case_and_whitespace_but_not_parameters() -> None:
    assert normalize_query("  What IS\tthis?\n ") == "what is this?"
    key = AnswerCache.key
    assert key("What is  this?", {}) == key(" what is this? ", {})
    assert key("q", {"a": 1, "b": 2}) == key("q", {"b": 2, "a": 1})
    assert key("q", {"lang": "en"}) != key("q", {"lang": "fr"})
    assert key("q", {}) != key("different q", {})


async def test_cache_hit_skips_line_and_pacing(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=3)
    async with (
        serve(upstream_url=url, cache_size=10, upstream_interval_s=30) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        first = await ask(client, running.base, "What is guestqueue?")
        began = time.monotonic()
        second = await ask(client, running.base, "  what is   GUESTQUEUE? ")
        assert time.monotonic() - began < 2, "a hit does not wait 30 s for the pacing limiter"
        assert_drained(running)
        status = (await client.get(f"{running.base}/queue/status")).json()
    assert first[-1].data["cached"] is False and second[-1].data["cached"] is True
    assert [e.data for e in second if e.name == "answer_chunk"] == [e.data for e in first if e.name == "answer_chunk"]
    assert second[-1].data["answer"] == first[-1].data["answer"]
    assert second[-1].data["suggested_questions"] == ["more?"]
    assert "queued" not in [e.name for e in second]
    assert len(upstream.calls(tag)) == 1 and status["cache_hits"] == 1


async def test_only_successful_answers_are_cached(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(mode="status", status=500)
    async with serve(upstream_url=url, cache_size=10) as running, httpx.AsyncClient(timeout=10) as client:
        for _ in range(2):
            events = await ask(client, running.base, "same question")
            assert events[-1].name == "error"
    assert len(upstream.calls(tag)) == 2


async def test_single_flight_one_upstream_call_for_identical_questions(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=4, delay=0.1)
    async with (
        serve(upstream_url=url, cache_size=10, max_concurrent_requests=2) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        results = await asyncio.gather(*(ask(client, running.base, "Popular question?") for _ in range(5)))
        assert_drained(running)
        status = (await client.get(f"{running.base}/queue/status")).json()
    assert len(upstream.calls(tag)) == 1
    answers = {r[-1].data["answer"] for r in results}
    assert answers == {"chunk0 chunk1 chunk2 chunk3 "}
    assert sorted(r[-1].data["cached"] for r in results) == [False, True, True, True, True]
    for events in results:
        assert [e.data for e in events if e.name == "answer_chunk"] == [f"chunk{i} " for i in range(4)]
        assert len({e.data["request_id"] for e in events if isinstance(e.data, dict)}) == 1, "own request id"
    assert status["completed_requests"] == 5 and status["total_requests"] == 5


async def test_riders_survive_the_first_guest_leaving(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=2, delay=0.5)
    async with (
        serve(upstream_url=url, cache_size=10, max_concurrent_requests=1, reconnect_grace_s=0.2) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        blocker = asyncio.create_task(ask(client, running.base, "blocker"))
        await wait_until(lambda: len(running.service.running) == 1)
        leader = await stream_events(client, f"{running.base}/chat", json={"query": "shared"}, stop_after="queued")
        rider = asyncio.create_task(ask(client, running.base, "shared"))  # rides the leader's flight...
        await wait_until(lambda: running.service.stats.total_requests == 3)
        leader_id = leader[0].data["request_id"]
        # ...which the leader leaves once its reconnect grace is over, while still in line.
        await wait_until(lambda: running.service.registry.get(leader_id).done, message="leader abandoned")
        assert len(running.service.waiting) == 1, "the flight keeps its place for the rider"
        rider_events = await rider
        await blocker
        assert_drained(running)
        leader_row = (await client.get(f"{running.base}/queue/request/{leader_id}")).json()
    assert leader[0].data["queue_position"] == 1 and leader_row["error_code"] == "disconnected"
    assert rider_events[-1].name == "workflow_complete" and rider_events[-1].data["answer"] == "chunk0 chunk1 "
    assert rider_events[-1].data["cached"] is True, "it rode the leader's flight"
    assert [c["body"]["query"] for c in upstream.calls(tag)] == ["blocker", "shared"]


async def test_one_sessions_answer_never_reaches_another_session(upstream: MockUpstream) -> None:
    # An upstream with per-session memory: Alice and Bob ask the same question at once
    # (single-flight would have merged them), Carol later (the cache would have answered her).
    url, tag = upstream.tagged(mode="memory", delay=0.3)
    async with (
        serve(upstream_url=url, cache_size=10, max_concurrent_requests=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        alice, bob = await asyncio.gather(
            ask(client, running.base, "What did I tell you?", session_id="alice"),
            ask(client, running.base, "  what did I tell you? ", session_id="bob"),
        )
        carol = await ask(client, running.base, "What did I tell you?", session_id="carol")
        alice_again = await ask(client, running.base, "what did i tell you?", session_id="alice")
        anonymous = await asyncio.gather(*(ask(client, running.base, "What did I tell you?") for _ in range(2)))
        assert_drained(running)
    for name, events in (("alice", alice), ("bob", bob), ("carol", carol)):
        assert events[-1].name == "workflow_complete"
        assert events[-1].data["answer"] == f"private answer for session={name}; earlier questions: []", name
        assert events[-1].data["cached"] is False, f"{name}'s answer came from its own upstream call"
    assert alice_again[-1].data["cached"] is True, "a session still gets its own earlier answer from the cache"
    assert alice_again[-1].data["answer"] == alice[-1].data["answer"]
    assert {r[-1].data["answer"] for r in anonymous} == {"private answer for session=None; earlier questions: []"}
    assert sorted(r[-1].data["cached"] for r in anonymous) == [False, True], "no session: shared as before"
    sessions = [call["body"]["session_id"] for call in upstream.calls(tag)]
    assert sorted(map(str, sessions)) == ["None", "alice", "bob", "carol"], "one call per session, with its own id"


def test_keys_differ_by_session() -> None:
    key = AnswerCache.key
    assert key("q", {}, "alice") != key("q", {}, "bob")
    assert key("q", {}, "alice") != key("q", {})
    assert key(" Q ", {}, "alice") == key("q", {}, "alice")
    assert key("q", {}) == key("q", {}, None)
