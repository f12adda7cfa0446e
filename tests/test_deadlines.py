"""A guest's own deadline (``max_wait_sec``, ``X-Max-Wait``): refused at once when the line predicts
it will not start in time, and sent away with ``timeout`` code ``deadline`` if still in line then;
on a memory line and on a Redis line, over real uvicorn, a real mock upstream and a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import MockUpstream, Running, ask, serve, stream_events, wait_until
from .redis_server import RedisServer
from .support.lines import serve_lines
from .support.waitingroom import ROOM_SECRET, join_room, poll_room, poll_until, room_toml

LINES = ["memory", "redis"]


@asynccontextmanager
async def held_line(
    kind: str, redis_server: RedisServer, upstream: MockUpstream, tmp_path: Path, *, measured_s: float
) -> AsyncIterator[tuple[Running, httpx.AsyncClient, asyncio.Task[Any], str]]:
    """One slot, taken by a call held at a gate of the mock upstream; the line's estimate is as if
    calls took ``measured_s``. Yields the server, a client, the held guest's stream and the gate."""
    gate = uuid.uuid4().hex[:10]
    shared: dict[str, Any] = {"redis_url": redis_server.url, "redis_prefix": f"test-{gate}"} if kind == "redis" else {}
    async with (
        serve(
            upstream_url=upstream.url(chunks=1, gate=gate),
            max_concurrent_requests=1,
            request_timeout_s=60.0,
            db_path=str(tmp_path / "log.db"),
            **shared,
        ) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        running.service.positions.estimator.record(measured_s)
        held = asyncio.create_task(ask(client, running.base, "held"))
        try:
            await wait_until(lambda: running.service.line.peek().active == 1, 10, "the held call")
            yield running, client, held, gate
        finally:
            await upstream.open_gate(gate)
            await held


def _row(db: Path, request_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(db) as conn:
        status, code = conn.execute(
            "SELECT status, error_code FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
    return str(status), code


@pytest.mark.parametrize("kind", LINES)
async def test_a_guest_still_in_line_at_its_deadline_leaves_with_timeout_deadline(
    kind: str, redis_server: RedisServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    async with held_line(kind, redis_server, upstream, tmp_path, measured_s=0.1) as (running, client, _, gate):
        hurried = asyncio.create_task(ask(client, running.base, "in a hurry", max_wait_sec=1.5))
        await wait_until(lambda: running.service.line.peek().size == 1, 10, "the hurried guest in line")
        if kind == "redis":  # an instance that takes the guest over keeps its deadline
            [ticket] = [t for t in running.service.registry.live() if t.query == "in a hurry"]
            await wait_until(lambda: ticket.recorded is None or ticket.recorded.done(), 10, "its record written")
            record = await running.service.core.places.load(ticket.id)
            assert record is not None and record.max_wait_s == 1.5
        behind = asyncio.create_task(ask(client, running.base, "patient"))
        events = await asyncio.wait_for(hurried, 20)
        assert events[0].name == "queued" and events[-1].name == "timeout", events
        ending = events[-1].data
        assert ending["code"] == "deadline" and "1.5 seconds" in ending["error"] and ending["fallback"]
        assert not any(e.name == "processing" for e in events)
        await wait_until(lambda: running.service.line.peek().size == 1, 10, "its place freed")
        await upstream.open_gate(gate)
        assert [e.name for e in await behind][-1] == "workflow_complete", "the guest behind it was served"
    assert _row(tmp_path / "log.db", ending["request_id"]) == ("timeout", "deadline")


@pytest.mark.parametrize("kind", LINES)
async def test_a_deadline_the_line_predicts_it_will_miss_is_refused_at_once(
    kind: str, redis_server: RedisServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    # One call ahead, measured at 30 s: a newcomer's estimate is about 30 s.
    async with held_line(kind, redis_server, upstream, tmp_path, measured_s=30.0) as (running, client, _, _):
        refused = await client.post(f"{running.base}/chat", json={"query": "now", "max_wait_sec": 5})
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "wait_too_long" and "5 s you can wait" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 20
        joined = await stream_events(
            client, f"{running.base}/chat", json={"query": "later", "max_wait_sec": 600}, stop_after="queued"
        )
        assert joined[0].name == "queued", "a deadline the line can meet is admitted"


async def test_max_wait_sec_must_be_seconds_above_0_and_at_most_a_day(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(chunks=1)) as running, httpx.AsyncClient(timeout=10) as client:
        for bad in ("5", 0, -1, 86_401, True, [5], {"s": 5}):
            reply = await client.post(f"{running.base}/chat", json={"query": "q", "max_wait_sec": bad})
            assert reply.status_code == 422 and reply.json()["code"] == "invalid_field", (bad, reply.text)
            assert "max_wait_sec" in reply.json()["error"]
        events = await ask(client, running.base, "fine", max_wait_sec=86_400)
        assert events[-1].name == "workflow_complete"


async def test_the_openai_door_takes_the_deadline_as_x_max_wait(
    redis_server: RedisServer, upstream: MockUpstream, tmp_path: Path
) -> None:
    messages: Any = [{"role": "user", "content": "now"}]
    async with held_line("memory", redis_server, upstream, tmp_path, measured_s=30.0) as (running, _, _, _):
        base_url = running.base.removesuffix("/api/v1/guest") + "/v1"
        # Default retries: the SDK is told not to retry a deadline it cannot meet (x-should-retry).
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-none", timeout=20)
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(model="guest", messages=messages, extra_headers={"X-Max-Wait": "5"})
        assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "wait_too_long"
        assert refused.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.BadRequestError) as invalid:
            await sdk.chat.completions.create(model="guest", messages=messages, extra_headers={"X-Max-Wait": "soon"})
        assert isinstance(invalid.value.body, dict) and invalid.value.body["param"] == "X-Max-Wait"
        await sdk.close()


async def test_a_waiting_room_visitor_may_say_how_long_it_waits(tmp_path: Path) -> None:
    # One slot, held by the first visitor's 30 s session.
    async with (
        serve_lines(tmp_path, room_toml(max_active=1), token_secret=ROOM_SECRET) as (running, lines),
        httpx.AsyncClient(timeout=10) as client,
    ):
        room = f"{lines}/shop"
        first = await join_room(client, room)
        await poll_until(lambda: _admitted(client, room, first["request_id"]))
        assert running.guest.lineup is not None
        service = running.guest.lineup.get("shop").service
        service.positions.estimator.record(0.1)  # as if sessions were short: the line admits the deadline
        hurried = await client.post(f"{room}/join", json={"max_wait_sec": 1})
        assert hurried.status_code == 202 and hurried.json()["status"] == "queued", hurried.text
        ended = await poll_until(lambda: _ended(client, room, hurried.json()["request_id"]))
        assert ended["status"] == "timeout" and ended["code"] == "deadline", ended
        invalid = await client.post(f"{room}/join", json={"max_wait_sec": "1"})
        assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_field"


async def _admitted(client: httpx.AsyncClient, room: str, request_id: str) -> bool:
    return bool((await poll_room(client, room, request_id))["status"] == "admitted")


async def _ended(client: httpx.AsyncClient, room: str, request_id: str) -> dict[str, Any] | None:
    state = await poll_room(client, room, request_id)
    return None if state["status"] == "queued" else state
