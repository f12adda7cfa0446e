"""A hostile upstream's Retry-After: parsed strictly, held at most GUEST_UPSTREAM_MAX_HOLD_SEC, shown in /health."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import httpx
import pytest

from guestqueue import PacingLimiter
from guestqueue.upstream.http import retry_after_s

from .conftest import MockUpstream, ask, assert_drained, serve, stream_events, wait_until

NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)


def test_retry_after_takes_finite_seconds_and_http_dates_only() -> None:
    assert retry_after_s("7") == 7 and retry_after_s(" 1.5 ") == 1.5 and retry_after_s("0") == 0
    assert retry_after_s("99999") == 99999, "capped by the limiter, not here"
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 30
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 -0000", now=NOW) == 30
    assert retry_after_s("Wed, 21 Oct 2015 07:20:00 GMT", now=NOW) == 0, "a date in the past: go now"
    bad_values = (None, "", "inf", "Infinity", "-inf", "nan", "1e999", "-5", "soon", "Wed, 99 Foo 2015", "1 Jan 99999")
    for bad in bad_values:
        assert retry_after_s(bad, now=NOW) is None, bad


async def test_holds_are_capped_and_never_infinite() -> None:
    limiter = PacingLimiter(interval_s=0, max_hold_s=0.2)
    for delay in (99999.0, 1e308, math.inf):
        limiter.hold_until(delay)
        assert 0.1 < limiter.held_s() <= 0.2 and math.isfinite(limiter.delay_s())
    limiter.hold_until(math.nan)
    limiter.hold_until(-5)
    waited = await limiter.acquire()
    assert 0.1 < waited < 0.5 and limiter.held_s() == 0
    with pytest.raises(ValueError):
        PacingLimiter(interval_s=0, max_hold_s=math.inf)


@pytest.mark.parametrize("retry_after", ["99999", "1e308"])
async def test_a_huge_retry_after_holds_the_line_only_for_the_cap(upstream: MockUpstream, retry_after: str) -> None:
    url, tag = upstream.tagged(fail=1, status=429, retry_after=retry_after, chunks=1)
    async with (
        serve(upstream_url=url, upstream_retries=1, upstream_max_hold_s=1.0) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        async with asyncio.timeout(8):  # before the fix: 28 hours, or forever
            first = asyncio.create_task(ask(client, running.base, "first"))
            await wait_until(lambda: running.service.line.limiter.held_s() > 0, message="the upstream's hold")
            health = (await client.get(f"{running.base}/health")).json()
            events = await first
        assert_drained(running)
        health_after = (await client.get(f"{running.base}/health")).json()
    assert health["status"] == "degraded", health
    assert "upstream asked us to wait: no new calls for 1 s" in health["problems"], health
    assert health_after["status"] == "ok" and health_after["problems"] == []
    assert events[-1].name == "workflow_complete"
    calls = upstream.calls(tag)
    assert len(calls) == 2 and 1.0 <= calls[1]["t"] - calls[0]["t"] < 3.0, "held for the cap, then retried"


async def test_an_infinite_retry_after_is_ignored_and_never_reaches_json_or_headers(upstream: MockUpstream) -> None:
    # The retry streams slowly, so a second guest waits in line and a third finds it full.
    url, tag = upstream.tagged(fail=1, status=429, retry_after="inf", chunks=2, delay=1.0)
    async with (
        serve(upstream_url=url, upstream_retries=1, max_concurrent_requests=1, max_queue_size=1) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        async with asyncio.timeout(10):  # before the fix: the first guest's retry waited forever
            first = asyncio.create_task(ask(client, running.base, "first"))
            await wait_until(lambda: len(running.service.running) == 1, message="first processing")
            second = asyncio.create_task(ask(client, running.base, "second"))
            await wait_until(lambda: len(running.service.waiting) == 1, message="second in line")
            full = await client.post(f"{running.base}/chat", json={"query": "third"})
            health = (await client.get(f"{running.base}/health")).json()
            results = await asyncio.gather(first, second)
        assert_drained(running)
    # Before the fix this 429 was a 500 (OverflowError in math.ceil), and queued events said Infinity.
    assert full.status_code == 429 and full.json()["code"] == "queue_full"
    assert 1 <= int(full.headers["retry-after"]) <= 86_400
    waits = [e.data["estimated_wait_sec"] for e in results[1] if e.name == "queued"]
    assert waits and all(math.isfinite(w) for w in waits), waits
    assert health["status"] == "ok", health
    assert [r[-1].name for r in results] == ["workflow_complete", "workflow_complete"]
    calls = upstream.calls(tag)
    assert len(calls) == 3 and calls[1]["t"] - calls[0]["t"] < 1.0, "no hold: the retry only backed off"


async def test_an_http_date_retry_after_is_honoured(upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(fail=1, status=503, retry_after_in=3, chunks=1)
    async with serve(upstream_url=url, upstream_retries=1) as running, httpx.AsyncClient(timeout=10) as client:
        began = time.monotonic()
        events = await stream_events(client, f"{running.base}/chat", json={"query": "q"})
    assert events[-1].name == "workflow_complete"
    calls = upstream.calls(tag)
    # The date has whole seconds: 3 s ahead is 2 to 3 s of hold. Before the fix: backoff only (< 0.5 s).
    assert len(calls) == 2 and calls[1]["t"] - calls[0]["t"] >= 1.5 and time.monotonic() - began < 5
