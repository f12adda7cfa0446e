"""Scenario 8: Redis flushed, restarted empty and stalled under three instances behind nginx, with a
waiting room beside the line (tests/chaos/forgetful.py; the long version: python bench/chaos.py
--only forgetful)."""

from __future__ import annotations

from pathlib import Path

from .chaos.forgetful import forgetful_redis
from .conftest import MockUpstream


async def test_a_forgetful_redis_costs_guests_time_never_an_answer_their_order_or_a_duplicate(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    verdict = await forgetful_redis(upstream, tmp_path, guests=45, visitors=9)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
    assert verdict.counts["flush"] == verdict.counts["restart"] == verdict.counts["sleep"] == 1
