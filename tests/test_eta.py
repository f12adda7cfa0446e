"""WaitEstimator: concurrency, running jobs and pacing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from guestqueue import clock
from guestqueue.eta import MAX_ESTIMATE_S, WaitEstimator

from .conftest import MockUpstream, Received, serve, stream_events, wait_until


def _estimator(concurrency: int, interval: float, elapsed: list[float], delay: float = 0.0) -> WaitEstimator:
    estimator = WaitEstimator(concurrency, interval, lambda: (elapsed, delay))
    for _ in range(5):
        estimator.record(10.0)
    return estimator


def test_free_slots_and_no_pacing_mean_no_wait() -> None:
    estimator = _estimator(3, 0, [])
    assert [estimator.estimate_s(p) for p in (1, 2, 3)] == [0, 0, 0]
    assert estimator.estimate_s(4) == pytest.approx(10)


def test_running_jobs_are_expected_to_end_at_the_average() -> None:
    estimator = _estimator(1, 0, [4.0])
    assert estimator.estimate_s(1) == pytest.approx(6)
    assert estimator.estimate_s(2) == pytest.approx(16)


def test_pacing_bounds_the_estimate() -> None:
    estimator = _estimator(10, 10, [], delay=3)
    # Ten free slots, but starts come 10 s apart, the first in 3 s.
    assert [estimator.estimate_s(p) for p in (1, 2, 5)] == pytest.approx([3, 13, 43])


def test_moving_average_follows_recent_durations() -> None:
    estimator = _estimator(1, 0, [0.0])
    for _ in range(20):
        estimator.record(2.0)
    estimator.invalidate()
    assert estimator.avg_processing_s == pytest.approx(2)
    assert estimator.estimate_s(2) == pytest.approx(4)


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e308])
def test_estimates_stay_finite_whatever_the_limiter_says(delay: float) -> None:
    # They go into JSON events and Retry-After headers: inf or nan would break both.
    estimator = _estimator(1, 1, [], delay)
    estimates = [estimator.estimate_s(p) for p in (1, 2, 50)]
    assert all(0 <= e <= MAX_ESTIMATE_S for e in estimates), estimates


def test_a_question_asked_after_the_schedule_was_made_counts_from_then(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    estimator = _estimator(1, 0, [4.0])
    assert estimator.estimate_s(2) == pytest.approx(16)
    now[0] += 2.5  # no start, no view since: the same schedule, 2.5 s nearer
    assert estimator.estimate_s(2) == pytest.approx(13.5)
    low, high = estimator.range_s(2)
    assert low <= 13.5 <= high
    now[0] += 60  # past its expected start: any moment now, never negative
    assert estimator.estimate_s(1) == 0 and estimator.range_s(1) == (0, 0)


def test_random_calls_on_several_slots_start_sooner_than_slots_kept_in_step() -> None:
    # Both slots busy for another ~10 s each: with fixed calls the first two start in 10 s and the
    # third in 20 s; with random calls the earlier of two ends comes sooner, and the starts lean
    # towards one every call / slots (the slots do not stay in step).
    fixed = _estimator(2, 0, [0.0, 0.0])
    assert [fixed.estimate_s(p) for p in (1, 2, 3)] == pytest.approx([10, 10, 20])
    varied = WaitEstimator(2, 0, lambda: ([0.0, 0.0], 0.0))
    for duration in (1.0, 19.0, 3.0, 17.0, 5.0, 15.0, 10.0, 10.0):  # mean 10, sd ~6
        varied.record(duration)
    first, second, third = (varied.estimate_s(p) for p in (1, 2, 3))
    assert 5 < first < 10 and first < second and 15 < third < 20, (first, second, third)


async def test_a_guest_right_behind_a_start_hears_the_pacing_wait_at_once(upstream: MockUpstream) -> None:
    """Issue 22 point 11: the estimate read 0.0, then 9.1 a second later, while the next start waited
    out the 10 s pacing: the view it came from was taken before the call ahead started."""
    async with (
        serve(
            upstream_url=upstream.url(chunks=2, delay=1.0),
            upstream_interval_s=10.0,
            max_concurrent_requests=3,
            position_update_s=5.0,
        ) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        ahead = asyncio.create_task(stream_events(client, f"{running.base}/chat", json={"query": "ahead"}))
        await wait_until(lambda: len(running.service.running) == 1, 5, "the first call to start")
        first: list[Received] = []
        async with aconnect_sse(client, "POST", f"{running.base}/chat", json={"query": "behind"}) as source:
            async for sse in source.aiter_sse():
                first.append(Received(sse.event, sse.id, json.loads(sse.data)["data"]))
                break
        assert first[0].name == "queued", first
        assert 8.0 <= first[0].data["estimated_wait_sec"] <= 10.5, first[0].data
        ahead.cancel()


def test_the_range_holds_the_estimate_and_widens_with_the_place() -> None:
    estimator = _estimator(1, 0, [])
    ranges = [estimator.range_s(p) for p in (1, 2, 5, 20)]
    for position, (low, high) in zip((1, 2, 5, 20), ranges, strict=True):
        estimate = estimator.estimate_s(position)
        assert low <= estimate * 0.9 + 1e-9 and high >= estimate * 1.1 - 1e-9, (position, low, estimate, high)
    widths = [high - low for low, high in ranges]
    assert widths == sorted(widths) and widths[-1] > widths[1]
    # The same calls measured as varying: a wider range than calls measured all alike.
    varied = WaitEstimator(1, 0, lambda: ([], 0.0))
    for seconds in (5.0, 15.0, 5.0, 15.0, 10.0):
        varied.record(seconds)
    low, high = varied.range_s(20)
    assert high - low > widths[-1]


def test_no_start_comes_sooner_than_the_pacing_allows_so_neither_does_the_range() -> None:
    estimator = _estimator(10, 10, [], delay=3)  # ten free slots, one start every 10 s
    assert [estimator.range_s(p)[0] for p in (1, 2, 5)] == pytest.approx([3, 13, 43])


async def test_guests_hear_a_range_and_metrics_tell_how_it_held(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(chunks=1, first=0.3), max_concurrent_requests=1) as running,
        httpx.AsyncClient(timeout=30) as client,
    ):
        guests = await asyncio.gather(
            *(stream_events(client, f"{running.base}/chat", json={"query": f"q{n}"}) for n in range(4))
        )
        for events in guests:
            for queued in (e.data for e in events if e.name == "queued"):
                low, high = queued["estimated_wait_range_sec"]
                assert low <= queued["estimated_wait_sec"] <= high, queued
        metrics = (await client.get(f"{running.base}/metrics")).text
    starts = {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "guestqueue_eta_range_starts_total"
    }
    errors = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "guestqueue_eta_relative_error_count"
    ]
    assert sum(starts.values()) == 4 and set(starts) == {"early", "inside", "late"}, starts
    assert errors == [4]
