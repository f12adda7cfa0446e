"""Scenario 4: the process is told to stop (SIGTERM) or killed (SIGKILL) with a crowd inside."""

from __future__ import annotations

from pathlib import Path

from .chaos.process import sigkill_then_restart, sigterm_with_crowd
from .conftest import MockUpstream


async def test_sigterm_with_hundreds_in_line_and_tens_processing(upstream: MockUpstream, tmp_path: Path) -> None:
    # Target: 200 waiting + 20 processing; every guest gets exactly one terminal event and one matching
    # terminal row; exit code 0 within the grace (1 s) + 3 s; server memory growth under 80 MB.
    verdict = await sigterm_with_crowd(upstream, tmp_path, waiting=200, processing=20)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()


async def test_sigkill_then_restart_leaves_no_open_rows(upstream: MockUpstream, tmp_path: Path) -> None:
    # Target: 60 requests open at SIGKILL; after the restart all 60 rows are `abandoned`, the
    # database passes integrity_check, and the new process serves.
    verdict = await sigkill_then_restart(upstream, tmp_path, rounds=1, requests=60)
    print(verdict.figures, dict(verdict.counts))
    verdict.assert_ok()
