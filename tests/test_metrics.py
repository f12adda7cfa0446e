"""/metrics: Prometheus text from the app's own registry, counters matching what happened."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MockUpstream, ask, serve, wait_until


def _samples(text: str, line: str = "guest") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One line's samples (its ``line`` label taken off), and those of no line (the log's)."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "line"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("line", line) == line
    }


async def test_metrics_match_the_requests_made(upstream: MockUpstream) -> None:
    url, _ = upstream.tagged(chunks=2, delay=0.2)
    async with (
        serve(upstream_url=url, cache_size=10, max_concurrent_requests=1, max_queue_size=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        await ask(client, running.base, "one")
        await ask(client, running.base, "one")  # cache hit
        blocker = asyncio.create_task(ask(client, running.base, "two"))
        await wait_until(lambda: len(running.service.running) == 1)
        waiting = asyncio.create_task(ask(client, running.base, "three"))
        await wait_until(lambda: len(running.service.waiting) == 1)
        assert (await client.post(f"{running.base}/chat", json={"query": "four"})).status_code == 429
        assert (
            await client.post(f"{running.base}/chat", content=b"{", headers={"content-type": "application/json"})
        ).status_code == 400
        live = _samples((await client.get(f"{running.base}/metrics")).text)
        assert live[("guestqueue_queue_size", ())] == 1 and live[("guestqueue_active_requests", ())] == 1
        await asyncio.gather(blocker, waiting)
        resp = await client.get(f"{running.base}/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    samples = _samples(resp.text)
    assert samples[("guestqueue_admitted_requests_total", ())] == 4
    assert samples[("guestqueue_requests_total", (("outcome", "completed"),))] == 4
    assert samples[("guestqueue_requests_total", (("outcome", "failed"),))] == 0
    assert samples[("guestqueue_rejections_total", (("reason", "queue_full"),))] == 1
    assert samples[("guestqueue_rejections_total", (("reason", "invalid_json"),))] == 1
    assert samples[("guestqueue_cache_hits_total", ())] == 1
    assert samples[("guestqueue_upstream_calls_total", (("result", "ok"),))] == 3
    assert samples[("guestqueue_wait_seconds_count", ())] == 4
    assert samples[("guestqueue_processing_seconds_count", ())] == 3, "cache hits are not processing"
    assert samples[("guestqueue_pacing_delay_seconds_count", ())] == 3
    assert samples[("guestqueue_queue_size", ())] == 0


async def test_two_apps_in_one_process_have_their_own_metrics(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url()) as a,
        serve(upstream_url=upstream.url()) as b,
        httpx.AsyncClient(timeout=10) as client,
    ):
        await ask(client, a.base, "only a")
        sa = _samples((await client.get(f"{a.base}/metrics")).text)
        sb = _samples((await client.get(f"{b.base}/metrics")).text)
    assert sa[("guestqueue_admitted_requests_total", ())] == 1
    assert sb[("guestqueue_admitted_requests_total", ())] == 0
