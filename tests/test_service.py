"""The position ticker in guestqueue/service.py."""

from __future__ import annotations

import asyncio
import itertools
import time

from guestqueue import Settings
from guestqueue.service import QueueService
from guestqueue.tickets import Ticket
from guestqueue.upstream import PythonUpstream, WorkflowRequest

from .conftest import FAST


async def _never(request: WorkflowRequest) -> object:  # pragma: no cover - never started
    yield ""


async def test_position_ticks_keep_a_fixed_cadence_however_long_a_round_takes() -> None:
    # A round of updates takes time (~0.15 s at 10 000 guests); the next round must
    # still come one interval after the previous one started, not after it ended.
    interval_s, work_s = 0.1, 0.04
    service = QueueService(Settings(**{**FAST, "position_update_s": interval_s}), PythonUpstream(_never))  # type: ignore[arg-type]
    service.submit("waiting", client="c")
    rounds: list[float] = []

    def slow_publish(ticket: Ticket) -> None:
        rounds.append(asyncio.get_running_loop().time())
        time.sleep(work_s)

    service._publish_position = slow_publish  # type: ignore[method-assign]
    ticker = asyncio.create_task(service._tick_positions())
    await asyncio.sleep(interval_s * 6.5)
    ticker.cancel()
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert len(gaps) >= 4
    assert max(gaps) < interval_s + 0.02, gaps
    assert sum(gaps) / len(gaps) < interval_s + 0.01
