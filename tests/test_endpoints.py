"""Endpoints, fields and status codes of DESIGN.md, and every bad input of the issue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from .conftest import MockUpstream, ask, assert_drained, serve, stream_events, wait_until

STATUS_FIELDS = {
    "queue_size",
    "active_requests",
    "max_concurrent",
    "max_queue_size",
    "total_requests",
    "completed_requests",
    "failed_requests",
    "timeout_requests",
    "rejected_requests",
    "cancelled_requests",
    "cache_hits",
    "avg_wait_ms",
    "avg_processing_ms",
    "uptime_sec",
    "next_start_sec",
}


async def _chunked(payload: bytes, piece: int = 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), piece):
        yield payload[start : start + piece]


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"content-type": "application/json"}, b"{not json", 400, "invalid_json"),
        ({"content-type": "application/json"}, b"[1, 2]", 400, "invalid_json"),
        ({"content-type": "application/json"}, b'"just a string"', 400, "invalid_json"),
        ({"content-type": "application/json"}, b'{"query": "\xff\xfe bad utf-8"}', 400, "invalid_json"),
        ({"content-type": "application/json"}, b"[" * 100_000 + b"]" * 100_000, 413, "body_too_large"),
        ({"content-type": "application/json"}, b"[" * 20_000 + b"]" * 20_000, 400, "invalid_json"),
        ({"content-type": "application/json"}, b'{"query": NaN}', 400, "invalid_json"),
        ({"content-type": "text/plain"}, b'{"query": "hi"}', 415, "unsupported_media_type"),
        ({}, b'{"query": "hi"}', 415, "unsupported_media_type"),
        ({"content-type": "application/json"}, b"{}", 422, "invalid_field"),
        ({"content-type": "application/json"}, b'{"query": "   "}', 422, "invalid_field"),
        ({"content-type": "application/json"}, b'{"query": 42}', 422, "invalid_field"),
        ({"content-type": "application/json"}, b'{"query": "hi", "parameters": [1]}', 422, "invalid_field"),
        ({"content-type": "application/json"}, b'{"query": "hi", "session_id": 5}', 422, "invalid_field"),
        ({"content-type": "application/json"}, json.dumps({"query": "x" * 101}).encode(), 422, "invalid_field"),
    ],
)
async def test_bad_input_is_rejected_with_json(
    upstream: MockUpstream, headers: dict[str, str], content: bytes, status: int, code: str
) -> None:
    async with (
        serve(upstream_url=upstream.url(), max_query_chars=100, max_body_bytes=65536) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for path in ("/chat", "/chat/simple"):
            resp = await client.post(f"{running.base}{path}", content=content, headers=headers)
            assert resp.status_code == status, (path, resp.text)
            assert resp.json()["code"] == code and resp.json()["error"]
        assert running.service.stats.total_requests == 0


async def test_body_limit_is_enforced_while_reading_chunked_bodies(upstream: MockUpstream) -> None:
    payload = json.dumps({"query": "hi", "parameters": {"pad": "x" * 5000}}).encode()
    async with (
        serve(upstream_url=upstream.url(), max_body_bytes=1000) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        resp = await client.post(
            f"{running.base}/chat", content=_chunked(payload), headers={"content-type": "application/json"}
        )
        assert "content-length" not in resp.request.headers  # really chunked
        assert resp.status_code == 413 and resp.json()["code"] == "body_too_large"
        small = await client.post(f"{running.base}/chat/simple", json={"query": "fits"})
        assert small.status_code == 200


async def test_unknown_routes_and_methods_answer_json() -> None:
    async with serve() as running, httpx.AsyncClient(timeout=10) as client:
        missing = await client.get(f"{running.base}/nope")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        wrong = await client.get(f"{running.base}/chat")
        assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
        unknown = await client.get(f"{running.base}/queue/request/{'a' * 32}")
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
        events = await client.get(f"{running.base}/chat/{'a' * 32}/events")
        assert events.status_code == 404


async def test_line_full_answers_429_with_retry_after(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.5)
    async with (
        serve(upstream_url=url, max_concurrent_requests=1, max_queue_size=2) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        held = [asyncio.create_task(ask(client, running.base, "q0"))]
        await wait_until(lambda: len(running.service.running) == 1)
        held += [asyncio.create_task(ask(client, running.base, f"q{i}")) for i in (1, 2)]
        await wait_until(lambda: len(running.service.waiting) == 2)
        resp = await client.post(f"{running.base}/chat", json={"query": "one too many"})
        assert resp.status_code == 429 and resp.json()["code"] == "queue_full"
        assert int(resp.headers["retry-after"]) >= 1
        assert all(r[-1].name == "workflow_complete" for r in await asyncio.gather(*held))
        status = (await client.get(f"{running.base}/queue/status")).json()
        assert status["rejected_requests"] == 1 and status["total_requests"] == 3


async def test_per_client_limit(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.3)
    async with serve(upstream_url=url, max_per_client=2) as running, httpx.AsyncClient(timeout=30) as client:
        held = [asyncio.create_task(ask(client, running.base, f"q{i}")) for i in range(2)]
        await wait_until(lambda: running.service.stats.total_requests == 2)
        resp = await client.post(f"{running.base}/chat", json={"query": "third"})
        assert resp.status_code == 429 and resp.json()["code"] == "client_limit"
        assert "retry-after" in resp.headers
        assert resp.json()["error"].startswith("You already have 2 questions in progress.")
        await asyncio.gather(*held)
        assert (await client.post(f"{running.base}/chat/simple", json={"query": "later"})).status_code == 200


async def test_chat_simple_answers(upstream: MockUpstream) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async with serve(upstream_url=upstream.url(mode="json", chunks=2)) as running:
            resp = await client.post(f"{running.base}/chat/simple", json={"query": "hi"})
            assert resp.status_code == 200
            body = resp.json()
            assert set(body) == {"request_id", "answer", "suggested_questions", "cached", "wait_ms", "duration_ms"}
            assert body["answer"] == "chunk0 chunk1 " and body["suggested_questions"] == ["next?"]
        async with serve(upstream_url=upstream.url(mode="hang"), request_timeout_s=0.3) as running:
            resp = await client.post(f"{running.base}/chat/simple", json={"query": "hi"})
            assert resp.status_code == 504 and resp.json()["fallback"]
        async with serve(upstream_url=upstream.url(mode="status", status=500)) as running:
            resp = await client.post(f"{running.base}/chat/simple", json={"query": "hi"})
            assert resp.status_code == 502 and resp.json()["code"] == "upstream_error"
            assert_drained(running)


async def test_status_request_history_and_health(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.3)
    async with (
        serve(upstream_url=url, max_concurrent_requests=1, history_size=3) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        blocker = asyncio.create_task(ask(client, running.base, "first"))
        await wait_until(lambda: len(running.service.running) == 1)
        waiting = asyncio.create_task(ask(client, running.base, "second"))
        await wait_until(lambda: len(running.service.waiting) == 1)
        status = (await client.get(f"{running.base}/queue/status")).json()
        assert set(status) == STATUS_FIELDS
        assert status["queue_size"] == 1 and status["active_requests"] == 1 and status["max_concurrent"] == 1

        queued_id = next(iter(running.service.waiting.values())).tickets[0].id
        queued = (await client.get(f"{running.base}/queue/request/{queued_id}")).json()
        assert queued["status"] == "queued" and queued["queue_position"] == 1 and "created_at" in queued
        await asyncio.gather(blocker, waiting)
        done = (await client.get(f"{running.base}/queue/request/{queued_id}")).json()
        assert done["status"] == "completed" and "queue_position" not in done
        assert done["started_at"] >= done["created_at"] and done["wait_ms"] > 0 and done["duration_ms"] > 0

        for i in range(3):
            await ask(client, running.base, f"more {i}")
        history = (await client.get(f"{running.base}/queue/history")).json()
        assert len(history) == 3, "bounded by GUEST_HISTORY_SIZE"
        created = [h["created_at"] for h in history]
        assert created == sorted(created, reverse=True), "newest first"

        health = await client.get(f"{running.base}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        status = (await client.get(f"{running.base}/queue/status")).json()
        assert status["completed_requests"] == 5 and status["avg_processing_ms"] > 0
        running.service.joining.accepting = False  # as a stop begins, without draining
        health = await client.get(f"{running.base}/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        refused = await client.post(f"{running.base}/chat", json={"query": "late"})
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"


async def test_resume_stream_with_last_event_id(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=6, delay=0.1)
    async with serve(upstream_url=url, reconnect_grace_s=2) as running, httpx.AsyncClient(timeout=30) as client:
        first = await stream_events(client, f"{running.base}/chat", json={"query": "q"}, stop_after="answer_chunk")
        request_id = first[0].data["request_id"]
        rest = await stream_events(
            client,
            f"{running.base}/chat/{request_id}/events",
            method="GET",
            headers={"Last-Event-ID": first[-1].id},
        )
        assert_drained(running)
    assert int(rest[0].id) == int(first[-1].id) + 1, "only events after Last-Event-ID"
    chunks = [e.data for e in first + rest if e.name == "answer_chunk"]
    assert chunks == [f"chunk{i} " for i in range(6)]
    assert rest[-1].name == "workflow_complete"


async def test_forwarded_address_is_believed_only_from_trusted_proxies(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.3)
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    async with httpx.AsyncClient(timeout=30) as client:
        async with serve(upstream_url=url, max_per_client=1) as running:
            held = asyncio.create_task(ask(client, running.base, "mine", headers=spoofed))
            await wait_until(lambda: running.service.stats.total_requests == 1)
            assert running.service.registry.clients == {"127.0.0.1"}, "untrusted peer: header ignored"
            other = await client.post(
                f"{running.base}/chat", json={"query": "x"}, headers={"X-Forwarded-For": "1.2.3.4"}
            )
            assert other.status_code == 429, "a spoofed header cannot dodge the per-client limit"
            await held
        async with serve(upstream_url=url, max_per_client=1, trusted_proxies="127.0.0.1") as running:
            held = asyncio.create_task(ask(client, running.base, "mine", headers=spoofed))
            await wait_until(lambda: running.service.stats.total_requests == 1)
            assert running.service.registry.clients == {"203.0.113.9"}, "trusted proxy: the forwarded address"
            other = await client.post(
                f"{running.base}/chat/simple", json={"query": "x"}, headers={"X-Forwarded-For": "198.51.100.7"}
            )
            assert other.status_code == 200, "another client behind the same proxy has its own limit"
            await held


async def test_health_degrades_after_repeated_upstream_failures(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(mode="status", status=503)) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for i in range(3):
            assert (await client.post(f"{running.base}/chat/simple", json={"query": f"q{i}"})).status_code == 502
        health = await client.get(f"{running.base}/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert "upstream" in health.json()["problems"][0]


async def test_the_client_limit_reads_right_in_the_singular(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(delay=0.3), max_per_client=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        held = asyncio.create_task(ask(client, running.base, "first"))
        await wait_until(lambda: running.service.stats.total_requests == 1)
        resp = await client.post(f"{running.base}/chat", json={"query": "second"})
        assert resp.json()["error"].startswith("You already have 1 question in progress."), resp.json()
        await held


async def test_pages_carry_security_headers_and_a_hash_based_policy() -> None:
    async with serve() as running, httpx.AsyncClient(timeout=10) as client:
        for path in ("/static/chat.html", "/dashboard", "/static/guestqueue.js"):
            resp = await client.get(f"{running.base}{path}")
            assert resp.status_code == 200, path
            assert resp.headers["x-content-type-options"] == "nosniff", path
            assert resp.headers["x-frame-options"] == "DENY", path
            assert resp.headers["referrer-policy"] == "no-referrer", path
        chat = await client.get(f"{running.base}/static/chat.html")
        policy = chat.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
        script = re.search(r"<script type=\"module\">(.*?)</script>", chat.text, re.S)
        assert script is not None
        digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
