"""Scenario 1: the chaos soak. Nothing accepted is lost, ended twice or left running."""

from __future__ import annotations

from pathlib import Path

from .chaos.soak import SoakConfig, chaos_soak
from .conftest import MockUpstream


async def test_chaos_soak_loses_nothing(upstream: MockUpstream, tmp_path: Path) -> None:
    # Targets: 0 accepted requests without exactly one terminal row; 0 guests that stayed without exactly
    # one terminal event (the one their upstream behaviour calls for); hangs and drips end as `timeout`
    # within the timeout + 0.5 s (+ what a thread measured the machine kept this process off the CPU:
    # tests/chaos/stalls.py); 0 upstream retries after a chunk; counters, tasks back to baseline;
    # memory growth under 60 MB. A 3 s timeout: beside the suite, a call failed once and retried has
    # taken 2.3 s here, and it must still complete.
    verdict = await chaos_soak(upstream, tmp_path, SoakConfig(requests=120, concurrency=40, timeout_s=3.0))
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
