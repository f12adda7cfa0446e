"""Scenario 7: three instances on one Redis line behind nginx, each restarted in turn under load and
one of them killed (tests/chaos/rolling.py; the long version: python bench/chaos.py --only rolling)."""

from __future__ import annotations

from pathlib import Path

from .chaos.rolling import rolling_restart
from .conftest import MockUpstream


async def test_a_rolling_restart_and_a_kill_lose_no_place_and_answer_nobody_twice(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    verdict = await rolling_restart(upstream, tmp_path, guests=60)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
    assert verdict.counts["reconnected"] > 0, "the restarts came too late to send anyone elsewhere"
