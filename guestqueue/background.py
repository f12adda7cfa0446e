"""Work a synchronous step starts and does not wait for (a record written to Redis, a place given
back): run as a task, kept until done, its error logged, never lost silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

logger = logging.getLogger("guestqueue")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[object]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def run(self, work: Awaitable[object] | None) -> asyncio.Future[object] | None:
        """Start ``work`` (None: nothing to do, e.g. a write a line alone on its process skips)."""
        if work is None:
            return None
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def settled(self) -> None:
        """Wait for everything started so far (at shutdown, and in tests)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _done(self, task: asyncio.Future[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background line update failed: %s", exc)


async def landed(*writes: asyncio.Future[object] | asyncio.Future[None] | None) -> None:
    """Wait until ``writes`` are done, whatever became of them (their errors are logged where they ran)."""
    pending = [write for write in writes if write is not None]
    if pending:
        await asyncio.gather(*(asyncio.shield(write) for write in pending), return_exceptions=True)
