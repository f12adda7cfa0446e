"""max_answer_bytes (issue 20 point 6): one answer is bounded across all its chunks, for every
upstream kind. Past it the call is closed and the guest hears ``error`` ``answer_too_large`` after
what it already received; the log keeps that bounded prefix. (RSS and SQLite growth before and
after: bench/strangers.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from .conftest import MockUpstream, Received, ask, serve, stream_events, wait_until
from .support.lines import serve_lines

LIMIT = 256 * 1024


def _answer(events: list[Received]) -> str:
    return "".join(event.data for event in events if event.name == "answer_chunk")


async def _row(db: Path, request_id: str) -> tuple[str, str, str]:
    def read() -> tuple[str, str, str] | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT status, error_code, answer FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2] or "")

    for _ in range(200):  # until the row has its ending (its batches may lag the guest's stream)
        row = await asyncio.to_thread(read)
        if row is not None and row[0] not in ("queued", "processing"):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("the log row did not end")


async def test_a_streamed_answer_past_the_limit_ends_answer_too_large(tmp_path: Path, upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=400, size=65536, delay=0.002)  # 25 MiB in 64 KiB chunks
    db = tmp_path / "gq.db"
    async with (
        serve(upstream_url=url, max_answer_bytes=LIMIT, db_path=str(db)) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        events = await ask(client, running.base)
        assert events[-1].name == "error" and events[-1].data["code"] == "answer_too_large", events[-1]
        received = _answer(events)
        assert 0 < len(received.encode()) <= LIMIT, "what fitted was sent first, nothing past the limit"
        status, code, logged = await _row(db, events[0].data["request_id"])
        assert (status, code) == ("failed", "answer_too_large") and logged == received, "the log keeps that prefix"
        await wait_until(lambda: bool(upstream.calls(tag)) and upstream.calls(tag)[-1]["sent"] < 400, 5)
        assert upstream.calls(tag)[-1]["sent"] < 400, "the call was closed, not read to its end"


async def test_one_huge_json_answer_is_not_read_past_the_bound(upstream: MockUpstream) -> None:
    for mode in ("json", "ndjson"):
        url = upstream.url(mode=mode, chunks=200, size=65536)  # 12.5 MiB in one JSON value, or one line each
        async with (
            serve(upstream_url=url, max_answer_bytes=64 * 1024) as running,
            httpx.AsyncClient(timeout=30) as client,
        ):
            events = await ask(client, running.base)
            assert events[-1].name == "error" and events[-1].data["code"] == "answer_too_large", (mode, events[-1])


async def test_a_pull_worker_cannot_send_more_than_the_limit(tmp_path: Path) -> None:
    """The review's worker sent 175 MiB in 16 MiB posts; here it tries the same in one stream."""
    toml = '[lines.gpu]\nupstream_kind = "pull"\nupstream_interval_sec = 0\nmax_answer_bytes = 262144\n'
    async with serve_lines(tmp_path, toml) as (_, lines), httpx.AsyncClient(timeout=60) as client:
        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "q"}))
        reply = await client.post(f"{lines}/gpu/jobs/receive", json={"wait_sec": 5})
        [job] = reply.json()["jobs"]
        line = json.dumps("y" * 60_000).encode() + b"\n"
        sent = 0

        async def flood() -> AsyncIterator[bytes]:
            nonlocal sent
            while sent < 175 * 1024 * 1024:
                sent += len(line)
                yield line

        jobs = lines.removesuffix("/lines") + "/jobs"
        try:
            answer = await client.post(
                f"{jobs}/{job['receipt']}/chunks", content=flood(), headers={"Content-Type": "application/x-ndjson"}
            )
            assert answer.status_code in (410, 413), answer.text
        except httpx.HTTPError:
            pass  # the server closed the connection while the worker was still sending: also a refusal
        events = await asked
        assert events[-1].name == "error" and events[-1].data["code"] == "answer_too_large"
        assert len(_answer(events).encode()) <= 262144
        assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes before refusing"
        late = await client.post(f"{jobs}/{job['receipt']}/chunks", json=["more"])
        assert late.status_code == 410
