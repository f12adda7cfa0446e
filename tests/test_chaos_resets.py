"""Scenario 3: hundreds of connections closed right after the request headers, mid-body or
right after the request. Every admitted request gets a terminal row; slots, counters,
connections and tasks are released."""

from __future__ import annotations

from pathlib import Path

from .chaos.resets import resets_before_stream
from .conftest import MockUpstream


async def test_resets_before_the_stream_release_everything(upstream: MockUpstream, tmp_path: Path) -> None:
    # Target: 300 connections (FIN and RST, three moments); 0 live tickets, 0 open connections,
    # tasks back to baseline, memory growth under 40 MB, one terminal row per admitted request.
    verdict = await resets_before_stream(upstream, tmp_path, connections=300)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
