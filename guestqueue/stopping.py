"""Stopping background tasks that talk to Redis, whose client may swallow a cancellation.

redis-py's asyncio client can turn a ``CancelledError`` that lands inside a
command into a connection error. A loop that retries on connection errors
would then go on for ever and its ``cancel()`` never end it (a SIGTERM that
never exits). So such loops call :func:`raise_if_cancelled` in their error
handlers, and owners stop them with :func:`stop_tasks`, which cancels again
while a task is still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("guestqueue")

STOP_ROUNDS = 10
STOP_ROUND_S = 0.2


def raise_if_cancelled() -> None:
    """In an ``except`` that retries: this task was cancelled and the error hid it: stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again while one still runs."""
    every = [task for task in tasks if task is not None]
    pending = {task for task in every if not task.done()}
    for _ in range(STOP_ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_ROUND_S)
    if pending:
        logger.warning("%d background tasks would not stop: %s", len(pending), pending)
    await asyncio.gather(*(task for task in every if task.done()), return_exceptions=True)
