"""WaitEstimator: concurrency, running jobs and pacing."""

from __future__ import annotations

import pytest

from guestqueue.eta import MAX_ESTIMATE_S, WaitEstimator


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
