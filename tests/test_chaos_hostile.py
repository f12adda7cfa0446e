"""Scenario 6: hostile input from guests and upstreams. Never a 500, never a forged event."""

from __future__ import annotations

import asyncio
import codecs
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestqueue import Chunk, WorkflowRequest

from .chaos.hostile import INJECTIONS, LIMIT, guest_cases, scripted_workflow, send_raw
from .chaos.oracle import SSE, SSEParser, Verdict, check_drained, read_log
from .conftest import MockUpstream, Running, serve

EVENT_NAMES = {"queued", "processing", "answer_chunk", "workflow_complete", "timeout", "error"}


def port_of(running: Running) -> int:
    return int(running.base.split(":")[2].split("/")[0])


async def test_hostile_guest_bodies_are_refused_with_the_right_status_never_500(tmp_path: Path) -> None:
    # Target: every case answers its expected status (413/400/415/422 or 200), none 500;
    # the request log still writes afterwards and nothing is left open.
    db = tmp_path / "hostile.db"
    verdict = Verdict("hostile guest bodies")
    limits = {"max_body_bytes": LIMIT, "max_query_chars": 1000}
    async with serve(workflow=scripted_workflow, db_path=str(db), **limits) as running:
        for name, body, content_type, chunked, expected in guest_cases():
            status, answer = await send_raw(port_of(running), body, content_type, chunked, "/api/v1/guest/chat/simple")
            verdict.check(status == expected, f"{name}: {status} (expected {expected}): {answer[:120]!r}")
        log = running.queue.log
        await asyncio.sleep(0.3)
        verdict.check(not log.failing and log.backlog == 0, f"request log stuck: backlog {log.backlog}")
        check_drained(verdict, running.service)
    rows = read_log(db)
    verdict.check(len(rows) == 3 and all(r.status == "completed" for r in rows), f"rows: {rows}")
    verdict.assert_ok()


async def test_lone_surrogates_from_the_upstream_do_not_break_answers_or_the_log(tmp_path: Path) -> None:
    async def workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
        yield "a\ud800b"
        yield Chunk("", suggested_questions=["q\udfff?"])

    db = tmp_path / "surrogates.db"
    async with serve(workflow=workflow, db_path=str(db)) as running, httpx.AsyncClient(timeout=10) as client:
        simple = await client.post(f"{running.base}/chat/simple", json={"query": "q"})
        streamed = await read_sse(client, f"{running.base}/chat", {"query": "q2"})
        await asyncio.sleep(0.3)
        assert not running.queue.log.failing and running.queue.log.backlog == 0
    assert simple.status_code == 200, simple.text
    assert simple.json()["answer"] == "a\ufffdb" and simple.json()["suggested_questions"] == ["q\ufffd?"]
    assert [e.data for e in streamed if e.name == "answer_chunk"] == ["a\ufffdb"]
    assert sorted(r.answer or "" for r in read_log(db)) == ["a\ufffdb", "a\ufffdb"]


@pytest.mark.parametrize("value", [b"\xb2", b"\xd9\xa1", b"-1", b"99999999999999999999999", b"1e3", b"\xff"])
async def test_hostile_last_event_id_never_500(value: bytes) -> None:
    async def workflow(request: WorkflowRequest) -> AsyncIterator[str]:
        yield "ok"

    async with serve(workflow=workflow) as running, httpx.AsyncClient(timeout=10) as client:
        request_id = (await client.post(f"{running.base}/chat/simple", json={"query": "q"})).json()["request_id"]
        url = f"{running.base}/chat/{request_id}/events"
        by_header = await client.get(url, headers={b"Last-Event-ID": value})
        by_query = await client.get(url, params={"last_event_id": value.decode("latin-1")})
    # 200 with the events after it, or 204 when that is at or past the terminal event: never a 500.
    assert {by_header.status_code, by_query.status_code} <= {200, 204}, (by_header.text, by_query.text)


@pytest.mark.parametrize("mode", ["sse", "ndjson", "text", "json"])
async def test_sse_injection_from_guest_and_upstream_arrives_as_one_chunk(upstream: MockUpstream, mode: str) -> None:
    # Target: for every injection text, the guest's strict SSE reader sees only real event names,
    # exactly one terminal event, and an answer equal to the text sent (echoed by the upstream).
    async with serve(upstream_url=upstream.url(mode=mode, echo=1)) as running, httpx.AsyncClient(timeout=10) as client:
        for text in INJECTIONS:
            events = await read_sse(client, f"{running.base}/chat", {"query": text})
            names = [e.name for e in events]
            assert set(names) <= EVENT_NAMES and names[-1] == "workflow_complete", names
            assert sum(n in ("workflow_complete", "timeout", "error") for n in names) == 1
            assert "".join(e.data for e in events if e.name == "answer_chunk") == text
            assert events[-1].data["answer"] == text
        check = Verdict("injection")
        check_drained(check, running.service)
        check.assert_ok()
    # The upstream itself tries to forge events (tests/mock_upstream.py INJECTION).
    async with (
        serve(upstream_url=upstream.url(mode=mode, inject=1)) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        events = await read_sse(client, f"{running.base}/chat", {"query": "x"})
        names = [e.name for e in events]
        assert set(names) <= EVENT_NAMES and names.count("workflow_complete") == 1 and names[-1] == "workflow_complete"
        assert "forged" not in str(events[-1].data.keys())


async def read_sse(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[SSE]:
    parser, decoder, events = SSEParser(), codecs.getincrementaldecoder("utf-8")(), []
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for raw in response.aiter_raw():
            events += parser.feed(decoder.decode(raw))
    assert not parser.problems, parser.problems
    return events


@contextmanager
def serve_in_thread(**overrides: Any) -> Iterator[str]:
    """guestqueue in its own thread and loop, for synchronous property tests (hypothesis)."""
    ready: list[str] = []
    stop = threading.Event()

    async def run() -> None:
        async with serve(**overrides) as running:
            ready.append(running.base)
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if ready or not thread.is_alive():
                break
            threading.Event().wait(0.02)
        assert ready, "server did not start"
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=20)


def sse_events(client: httpx.Client, url: str, body: dict[str, Any]) -> list[SSE]:
    parser, decoder, events = SSEParser(), codecs.getincrementaldecoder("utf-8")(), []
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        for raw in response.iter_raw():
            events += parser.feed(decoder.decode(raw))
    assert not parser.problems, parser.problems
    return [e for e in events if e.name != "queued"]


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_random_text_through_a_python_upstream_arrives_exactly() -> None:
    # Target: for any chunks, the events are processing, one answer_chunk per chunk with exactly its text,
    # then one workflow_complete whose answer is their concatenation.
    with serve_in_thread(workflow=scripted_workflow) as base, httpx.Client(timeout=10) as client:

        @PROPERTY
        @given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6))
        def roundtrip(chunks: list[str]) -> None:
            events = sse_events(client, f"{base}/chat", {"query": "q", "parameters": {"chunks": chunks}})
            assert [e.name for e in events] == ["processing", *["answer_chunk"] * len(chunks), "workflow_complete"]
            assert [e.data for e in events[1:-1]] == chunks
            assert events[-1].data["answer"] == "".join(chunks)

        roundtrip()


def test_random_text_through_an_http_upstream_arrives_exactly(upstream: MockUpstream) -> None:
    # The same over HTTP: the mock upstream echoes the query as one SSE chunk.
    with (
        serve_in_thread(upstream_url=upstream.url(mode="sse", echo=1), max_query_chars=200) as base,
        httpx.Client(timeout=10) as client,
    ):

        @PROPERTY
        @given(st.text(min_size=1, max_size=200).filter(lambda text: text.strip() != ""))
        def roundtrip(text: str) -> None:
            events = sse_events(client, f"{base}/chat", {"query": text})
            assert [e.name for e in events] == ["processing", "answer_chunk", "workflow_complete"]
            assert events[1].data == text and events[-1].data["answer"] == text

        roundtrip()
