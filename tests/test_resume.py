"""Resuming: the same POST again with an Idempotency-Key, and the 204 that stops an EventSource."""

from __future__ import annotations

import json
from typing import Any

import httpx
import websockets

from .conftest import MockUpstream, serve, stream_events
from .support.ws import messages, ws_url


async def test_a_dropped_post_stream_sent_again_resumes_the_same_request(upstream: MockUpstream) -> None:
    # What @microsoft/fetch-event-source does when a stream drops: the same POST, same headers,
    # plus Last-Event-ID. One request, one upstream call, every chunk once.
    url, tag = upstream.tagged(chunks=6, delay=0.1)
    key = {"Idempotency-Key": "4f1c2a9e-question-1"}
    async with serve(upstream_url=url, reconnect_grace_s=2) as running, httpx.AsyncClient(timeout=30) as client:
        chat = f"{running.base}/chat"
        first = await stream_events(client, chat, json={"query": "q"}, headers=key, stop_after="answer_chunk")
        rest = await stream_events(client, chat, json={"query": "q"}, headers={**key, "Last-Event-ID": first[-1].id})
        replay = await stream_events(client, chat, json={"query": "q"}, headers=key)
        assert running.service.stats.total_requests == 1
    assert int(rest[0].id) == int(first[-1].id) + 1, "only events after Last-Event-ID"
    chunks = [e.data for e in first + rest if e.name == "answer_chunk"]
    assert chunks == [f"chunk{i} " for i in range(6)]
    assert rest[-1].name == "workflow_complete"
    assert [e.data for e in replay if e.name == "answer_chunk"] == chunks, "no Last-Event-ID: from the start"
    assert replay[-1].data["request_id"] == first[0].data["request_id"]
    assert len(await upstream.acalls(tag)) == 1, "never a second upstream call"


async def test_an_idempotency_key_is_the_clients_own(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=1)
    async with serve(upstream_url=url, trusted_proxies="127.0.0.1") as running, httpx.AsyncClient(timeout=30) as client:
        simple = f"{running.base}/chat/simple"
        alice = {"Idempotency-Key": "k1", "X-Forwarded-For": "203.0.113.1"}
        bob = {"Idempotency-Key": "k1", "X-Forwarded-For": "203.0.113.2"}
        one = await client.post(simple, json={"query": "q"}, headers=alice)
        again = await client.post(simple, json={"query": "q"}, headers=alice)
        other = await client.post(simple, json={"query": "q"}, headers=bob)
        assert one.status_code == again.status_code == other.status_code == 200
        assert again.json()["request_id"] == one.json()["request_id"]
        assert other.json()["request_id"] != one.json()["request_id"], "the same key from another client"
        changed = await client.post(simple, json={"query": "another question"}, headers=alice)
        assert changed.status_code == 422 and changed.json()["code"] == "idempotency_mismatch"
        bad = await client.post(simple, json={"query": "q"}, headers={"Idempotency-Key": "x" * 300})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_field"
    assert len(await upstream.acalls(tag)) == 2


async def test_a_finished_fully_seen_request_answers_204(upstream: MockUpstream) -> None:
    # An EventSource that does not close() on the terminal event reconnects every few seconds;
    # 204 is what makes it stop.
    async with (
        serve(upstream_url=upstream.url(chunks=2), reconnect_grace_s=2) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        events = await stream_events(client, f"{running.base}/chat", json={"query": "q"})
        request_id, last = events[-1].data["request_id"], events[-1].id
        events_url = f"{running.base}/chat/{request_id}/events"
        seen = await client.get(events_url, headers={"Last-Event-ID": last})
        assert seen.status_code == 204 and seen.content == b""
        behind = await stream_events(client, events_url, method="GET", headers={"Last-Event-ID": str(int(last) - 1)})
        assert [e.name for e in behind] == ["workflow_complete"], "not everything seen: the rest is sent"


async def test_rejections_carry_retry_after_in_the_body_and_expose_the_header(upstream: MockUpstream) -> None:
    origin = "https://chat.example.org"
    async with (
        serve(upstream_url=upstream.url(delay=0.5), max_per_client=1, cors_origins=origin) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        async with client.stream("POST", f"{running.base}/chat", json={"query": "first"}):
            refused = await client.post(f"{running.base}/chat", json={"query": "second"}, headers={"Origin": origin})
        assert refused.status_code == 429
        assert refused.json()["retry_after"] == int(refused.headers["Retry-After"]) >= 1
        exposed = {h.strip().lower() for h in refused.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "x-request-id"} <= exposed


async def test_post_to_an_unknown_chat_endpoint_is_a_404_with_a_hint() -> None:
    async with serve() as running, httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{running.base}/chat/completions", json={"model": "x", "messages": []})
        assert resp.status_code == 404 and resp.json()["code"] == "not_found"
        assert "POST /chat" in resp.json()["error"]


async def test_a_websocket_question_sent_again_with_its_key_is_the_same_request(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=3, delay=0.1)
    question = {"query": "q", "idempotency_key": "ws-question-1"}
    async with serve(upstream_url=url, reconnect_grace_s=2) as running:
        async with websockets.connect(ws_url(running.base)) as ws:
            await ws.send(json.dumps(question))
            first = await ws.recv()  # then the connection drops
        async with websockets.connect(ws_url(running.base)) as ws:
            await ws.send(json.dumps(question))
            again = await messages(ws)
        assert running.service.stats.total_requests == 1
    assert json.loads(first)["request_id"] == again[-1]["request_id"]
    assert again[-1]["type"] == "result" and again[-1]["data"]["answer"] == "chunk0 chunk1 chunk2 "
    assert len(await upstream.acalls(tag)) == 1


async def test_the_ending_keeps_its_id_on_every_instance_of_a_shared_line(
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Issue 21 point 1, seen on main: a guest that saw `workflow_complete` (id 57) reconnected with
    Last-Event-ID 57 to the other instance and got the ending again as id 58. Now the ending keeps
    its id wherever the request is taken over: 204 for a guest that saw it, the same id otherwise."""
    shared: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "upstream_url": upstream.url(chunks=3),
    }
    async with serve(**shared) as one, serve(**shared) as two, httpx.AsyncClient(timeout=10) as client:
        for _ in range(20):
            events = await stream_events(client, f"{one.base}/chat", json={"query": "once"})
            ending = events[-1]
            assert ending.name == "workflow_complete"
            url = f"{two.base}/chat/{ending.data['request_id']}/events"
            seen_all = await client.get(url, headers={"Last-Event-ID": ending.id})
            assert seen_all.status_code == 204, "the ending came again from the other instance"
            missed = await stream_events(client, url, method="GET", headers={"Last-Event-ID": str(int(ending.id) - 1)})
            assert [(e.name, e.id) for e in missed] == [("workflow_complete", ending.id)]
            assert (await client.get(url, headers={"Last-Event-ID": ending.id})).status_code == 204
