"""Scenario 5: one client floods beside many normal ones (clients told apart by X-Forwarded-For
from a trusted proxy)."""

from __future__ import annotations

from pathlib import Path

from .chaos.flood import flood_beside_normal
from .conftest import MockUpstream


async def test_a_flooder_is_capped_and_the_others_barely_notice(upstream: MockUpstream, tmp_path: Path) -> None:
    # Target: 24 clients x 3 requests all served; the flooder (8 connections without pause) never has
    # more than GUEST_MAX_PER_CLIENT (2) open, and no normal request waits for more than 2 of its
    # calls; the others' mean wait <= 2 x the unflooded one + 1 s (a watchdog: wall-clock waits of
    # two runs on a busy machine).
    verdict = await flood_beside_normal(upstream, tmp_path, clients=24, each=3, flood_connections=8)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
