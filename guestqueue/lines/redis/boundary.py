"""Redis at one boundary, as httpx maps httpcore's errors in one place.

Whatever redis-py (or the socket under it) raises when Redis cannot be reached,
is loading, fails over or answers an error becomes
:class:`~guestqueue.errors.LineUnavailable` here, and only here
(:func:`unavailable`). Callers deal with that one error: a guest or a worker
hears 503 ``unavailable`` with Retry-After; a background loop says so in the
log and tries again (:func:`logged`). What went wrong (an address, a password
error) goes to the log as the error's cause, never to guests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...errors import LineUnavailable
from ...stopping import raise_if_cancelled, stop_tasks

logger = logging.getLogger("guestqueue.redis")

T = TypeVar("T")

FAILURES = (RedisError, OSError)  # OSError: a refused or reset connection, before redis-py wraps it
UNAVAILABLE = "The waiting line is unavailable right now. Please try again in a few seconds."
RETRY_AFTER_S = 5


LOG_EVERY_S = 5.0  # an outage fails many calls a second: the log hears of it this often
_last_logged = float("-inf")


@contextmanager
def unavailable(
    message: str = UNAVAILABLE, *, retry_after_s: int | None = RETRY_AFTER_S, quiet: bool = False
) -> Iterator[None]:
    """Redis failing inside the block raises LineUnavailable(``message``), the failure as its cause
    (and in the log, at most every LOG_EVERY_S, unless ``quiet``: the caller says it better)."""
    try:
        yield
    except FAILURES as exc:
        if not quiet:
            _log(exc)
        raise LineUnavailable(message, retry_after_s=retry_after_s) from exc


def _log(exc: BaseException) -> None:
    global _last_logged
    now = time.monotonic()
    if now - _last_logged >= LOG_EVERY_S:
        _last_logged = now
        logger.warning("Redis unreachable or failing: %s", exc)


async def call(awaitable: Awaitable[T], message: str = UNAVAILABLE, *, retry_after_s: int | None = RETRY_AFTER_S) -> T:
    """``await awaitable`` inside :func:`unavailable`."""
    with unavailable(message, retry_after_s=retry_after_s):
        return await awaitable


async def logged(awaitable: Awaitable[Any], what: str) -> bool:
    """``await awaitable``; if Redis fails, log ``what`` was not done (and why) and go on. True if done."""
    try:
        with unavailable():
            await awaitable
    except LineUnavailable as exc:
        raise_if_cancelled()  # a connection torn down by a cancel is the cancel, not an outage
        logger.warning("%s (%s)", what, exc.__cause__)
        return False
    return True


async def subscribe(
    redis: aioredis.Redis,
    channels: Sequence[str],
    on_message: Callable[[dict[str, Any]], Awaitable[None]],
    lost: str,
    *,
    pause_s: float = 0.5,
) -> None:
    """Forever: hand each message published on ``channels`` to ``on_message``; when Redis fails,
    log that ``lost`` (and why) and subscribe again after ``pause_s``. Run it as a task."""
    while True:
        try:
            with unavailable(quiet=True):
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(*channels)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            await on_message(message)
        except LineUnavailable as exc:
            raise_if_cancelled()
            logger.warning("%s (%s); listening again shortly", lost, exc.__cause__)
            await asyncio.sleep(pause_s)


def text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py gives bytes unless the client decodes)."""
    return value.decode() if isinstance(value, bytes) else value


class Spawned:
    """Fire-and-forget work (a write nobody waits for), kept alive until done; Redis failing in it is
    logged, not raised into nowhere."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._tasks: set[asyncio.Future[Any]] = set()

    def __call__(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(logged(work, self._what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel what is still running (and wait until it has stopped)."""
        await stop_tasks(list(self._tasks))
