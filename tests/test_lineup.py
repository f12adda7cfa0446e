"""Named lines over real uvicorn: each line's own API, pacing, mode and limits, side by side."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from guestqueue.lineup import Lineup

from .conftest import MockUpstream, Running, ask, stream_events, wait_until
from .support.lines import serve_lines


def _lineup(running: Running) -> Lineup:
    assert running.guest.lineup is not None
    return running.guest.lineup


def _starts(running: Running, line: str) -> list[float]:
    """When each of the line's calls started, by the server's own clock, in order."""
    starts = [ticket.started_at for ticket in _lineup(running).get(line).service.registry.held()]
    return sorted(start for start in starts if start is not None)


def _line_toml(name: str, url: str, **keys: Any) -> str:
    body = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in keys.items())
    return f'[lines.{name}]\nupstream_url = "{url}"\n{body}\n'


async def test_two_lines_with_different_pacing_run_side_by_side(tmp_path: Path, upstream: MockUpstream) -> None:
    fast_url, fast_tag = upstream.tagged(chunks=1)
    slow_url, slow_tag = upstream.tagged(chunks=1)
    toml = _line_toml("fast", fast_url, max_concurrent_requests=3) + _line_toml(
        "slow", slow_url, max_concurrent_requests=3, upstream_interval_sec=0.8
    )
    async with serve_lines(tmp_path, toml) as (running, lines), httpx.AsyncClient(timeout=30) as client:
        asked = [ask(client, f"{lines}/slow", f"slow {n}") for n in range(3)]
        asked += [ask(client, f"{lines}/fast", f"fast {n}") for n in range(3)]
        results = await asyncio.gather(*asked)
        assert all(events[-1].name == "workflow_complete" for events in results)
        # When each call started, by the server's own clock (an arrival at the upstream may lag its
        # start by tens of milliseconds beside a CPU-heavy process).
        slow_starts, fast_starts = _starts(running, "slow"), _starts(running, "fast")
        assert len(await upstream.acalls(slow_tag)) == len(await upstream.acalls(fast_tag)) == 3
    assert len(slow_starts) == len(fast_starts) == 3
    gaps = [b - a for a, b in itertools.pairwise(slow_starts)]
    assert slow_starts[-1] - slow_starts[0] >= 2 * 0.8 - 0.05, f"the slow line paces its own starts: {gaps}"
    assert min(gaps) >= 0.8 - 0.2, gaps  # unpaced, the three would start together
    assert fast_starts[-1] < slow_starts[1], "the fast line did not wait for the slow line's pacing"


async def test_lines_are_listed_and_each_serves_its_own_api(tmp_path: Path, upstream: MockUpstream) -> None:
    toml = _line_toml("a", upstream.url(chunks=1)) + _line_toml("b", upstream.url(chunks=1), mode="paused")
    async with serve_lines(tmp_path, toml) as (running, lines), httpx.AsyncClient(timeout=10) as client:
        listed = (await client.get(lines)).json()["lines"]
        assert [(line["name"], line["mode"]) for line in listed] == [("a", "open"), ("b", "paused")]
        answer = (await client.post(f"{lines}/a/chat/simple", json={"query": "hi"})).json()
        assert answer["answer"]
        found = (await client.get(f"{lines}/a/queue/request/{answer['request_id']}")).json()
        assert found["status"] == "completed"
        assert (await client.get(f"{lines}/b/queue/request/{answer['request_id']}")).status_code == 404, (
            "a request belongs to its line"
        )
        status = (await client.get(f"{lines}/a/queue/status")).json()
        assert status["completed_requests"] == 1
        assert (await client.get(f"{lines}/b/queue/status")).json()["total_requests"] == 0
        unknown = await client.post(f"{lines}/nope/chat", json={"query": "hi"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_line"
        # This file declares no line named guest: its address has no line either.
        no_guest = await client.post(f"{running.base}/chat", json={"query": "hi"})
        assert no_guest.status_code == 404 and no_guest.json()["code"] == "unknown_line"


async def test_a_paused_line_holds_everyone_in_order_until_it_opens(tmp_path: Path, upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=1)
    # One at a time: the upstream sees the calls in the order they started (two at once may arrive swapped).
    toml = _line_toml("m", url, mode="paused", max_concurrent_requests=1)
    async with serve_lines(tmp_path, toml) as (running, lines), httpx.AsyncClient(timeout=30) as client:
        guests = []
        for n in range(3):
            guests.append(asyncio.create_task(ask(client, f"{lines}/m", f"question {n}")))
            await wait_until(lambda n=n: _lineup(running).get("m").service.line.peek().size == n + 1)
        await asyncio.sleep(1.0)
        assert await upstream.acalls(tag) == [], "a paused line starts nothing"
        queue = _lineup(running).get("m")
        queue.service.reconfigure(dataclasses.replace(queue.spec, mode="open"))
        results = await asyncio.gather(*guests)
        calls = await upstream.acalls(tag)
    assert [call["body"]["query"] for call in calls] == ["question 0", "question 1", "question 2"]
    for events in results:
        queued = [e.data for e in events if e.name == "queued"]
        assert queued and queued[0]["line_mode"] == "paused", "a waiting guest hears why nothing moves"
        assert events[-1].name == "workflow_complete"


async def test_queue_all_tells_the_message_and_reject_refuses_with_it(tmp_path: Path, upstream: MockUpstream) -> None:
    toml = _line_toml("q", upstream.url(), mode="queue_all", message="Back at nine.") + _line_toml(
        "r", upstream.url(), mode="reject", message="Closed for the night."
    )
    async with serve_lines(tmp_path, toml) as (_, lines), httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(f"{lines}/r/chat", json={"query": "hi"})
        assert refused.status_code == 503
        assert refused.json() == {"error": "Closed for the night.", "code": "line_closed"}
        queued: dict[str, Any] = {}
        async with client.stream("POST", f"{lines}/q/chat", json={"query": "hi"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and "queue_position" in line:
                    queued = json.loads(line.removeprefix("data:"))["data"]
                    break
        assert queued["line_mode"] == "queue_all" and queued["message"] == "Back at nine."


async def test_a_guest_whose_predicted_wait_is_too_long_gets_429(tmp_path: Path, upstream: MockUpstream) -> None:
    # One slot, 2 s per call: the third guest's estimate is about 4 s, over the line's 3 s.
    toml = _line_toml("w", upstream.url(chunks=1, first=2.0), max_concurrent_requests=1, max_predicted_wait_sec=3)
    async with serve_lines(tmp_path, toml) as (running, lines), httpx.AsyncClient(timeout=30) as client:
        queue = _lineup(running).get("w")
        queue.service.positions.estimator.record(2.0)  # as if one call had been measured
        first = asyncio.create_task(stream_events(client, f"{lines}/w/chat", json={"query": "one"}))
        await wait_until(lambda: queue.service.line.peek().active == 1)
        second = asyncio.create_task(stream_events(client, f"{lines}/w/chat", json={"query": "two"}))
        await wait_until(lambda: queue.service.line.peek().size == 1)
        refused = await client.post(f"{lines}/w/chat", json={"query": "three"})
        assert refused.status_code == 429 and refused.json()["code"] == "wait_too_long"
        assert int(refused.headers["Retry-After"]) >= 1
        await asyncio.gather(first, second)


async def test_health_metrics_and_the_log_cover_every_line(tmp_path: Path, upstream: MockUpstream) -> None:
    db = tmp_path / "log.db"
    toml = _line_toml("guest", upstream.url(chunks=1)) + _line_toml("other", upstream.url(chunks=1))
    async with (
        serve_lines(tmp_path, toml, db_path=str(db)) as (running, lines),
        httpx.AsyncClient(timeout=10) as client,
    ):
        await ask(client, running.base, "to the guest line")
        await ask(client, f"{lines}/other", "to the other line")
        await ask(client, f"{lines}/other", "again to the other line")
        health = (await client.get(f"{running.base}/health")).json()
        metrics = (await client.get(f"{running.base}/metrics")).text
    assert health["status"] == "ok" and set(health["lines"]) == {"guest", "other"}
    admitted = {
        s.labels["line"]: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "guestqueue_admitted_requests_total"
    }
    assert admitted == {"guest": 1, "other": 2}
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT line, COUNT(*) FROM requests GROUP BY line").fetchall())
    assert rows == {"guest": 1, "other": 2}


async def test_a_scheduled_window_sets_the_mode_while_it_lasts(tmp_path: Path, upstream: MockUpstream) -> None:
    # The window outlasts a slow start (beside a CPU-heavy process the server took over 2 s to
    # answer, and a 2 s window had ended): 10 s, then the test waits for its end.
    ends_at = int(time.time()) + 10

    def at(epoch_s: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))

    toml = (
        f'[lines.s]\nupstream_url = "{upstream.url(chunks=1)}"\nmessage = "Maintenance until the hour."\n'
        f'[[lines.s.schedule]]\nstart = {at(time.time() - 60)}\nend = {at(ends_at)}\nmode = "reject"\n'
    )
    async with serve_lines(tmp_path, toml) as (_, lines), httpx.AsyncClient(timeout=10) as client:
        during = await client.post(f"{lines}/s/chat/simple", json={"query": "now?"})
        assert time.time() < ends_at, "the server took the whole window to start"
        assert during.status_code == 503 and during.json()["error"] == "Maintenance until the hour."
        await asyncio.sleep(max(0.0, ends_at - time.time()) + 0.5)
        after = await client.post(f"{lines}/s/chat/simple", json={"query": "and now?"})
        assert after.status_code == 200 and after.json()["answer"]
