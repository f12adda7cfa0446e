"""The clock that durations are measured on: the running event loop's.

Timers (``call_later``, ``asyncio.sleep``, the pacing limiter) run on the
loop's clock, so the waits and processing times that feed the wait estimate
are read from the same clock. On asyncio's own loop that is
``time.monotonic()`` (uvloop's counts whole milliseconds, on the same base);
under ``guestqueue simulate`` it is a virtual clock that jumps to the next
timer (simulate.py), and every duration has to follow it.

Wall-clock times (``created_at``, log rows, schedules) stay on ``time.time()``.
"""

from __future__ import annotations

import asyncio
import time


def monotonic() -> float:
    """Seconds on the running loop's clock; outside a loop, the monotonic clock asyncio's loop reads."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # e.g. a Ticket built in plain synchronous code
        return time.monotonic()
