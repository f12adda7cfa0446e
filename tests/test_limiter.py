"""PacingLimiter: spacing, FIFO, cancelled waiters, Retry-After holds."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from guestqueue import PacingLimiter


async def test_starts_are_spaced_by_the_interval_whoever_calls() -> None:
    limiter = PacingLimiter(interval_s=0.1)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def caller() -> None:
        async with limiter:
            starts.append(loop.time())

    await asyncio.gather(*(caller() for _ in range(5)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Starts are granted at least 0.1 s apart (the next from the actual grant time); a caller runs a
    # moment after its grant, and on a busy loop one moment may be a few ms longer than the next.
    assert len(starts) == 5 and min(gaps) >= 0.1 - 0.01 and starts[-1] - starts[0] >= 0.4 - 0.01, gaps
    assert limiter.starts == 5


async def test_first_come_first_served() -> None:
    limiter = PacingLimiter(interval_s=0.02)
    order: list[int] = []

    async def caller(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(caller(n)))
        await asyncio.sleep(0)  # each caller arrives before the next
    await asyncio.gather(*tasks)
    assert order == list(range(6))


async def test_cancelled_waiter_is_pruned_and_consumes_no_start() -> None:
    limiter = PacingLimiter(interval_s=0.2)
    await limiter.acquire()  # the next start is 0.2 s away
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(limiter.acquire())
    behind = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.05)
    assert limiter.waiting >= 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    began = loop.time()
    await behind
    # `behind` got the start the cancelled waiter would have had, not one interval later.
    assert loop.time() - began < 0.2
    assert limiter.starts == 2 and limiter.waiting == 0


async def test_zero_interval_never_waits() -> None:
    limiter = PacingLimiter(interval_s=0)
    waited = [await limiter.acquire() for _ in range(100)]
    assert max(waited) < 0.01


async def test_hold_until_delays_the_next_start() -> None:
    limiter = PacingLimiter(interval_s=0)
    limiter.hold_until(0.15)
    assert limiter.delay_s() > 0.1
    waited = await limiter.acquire()
    assert waited >= 0.14


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        PacingLimiter(interval_s=-1)


async def test_a_retry_goes_before_callers_still_waiting_for_their_first_turn() -> None:
    limiter = PacingLimiter(interval_s=0.05)
    await limiter.acquire()
    order: list[str] = []

    async def caller(name: str, *, first: bool = False) -> None:
        await limiter.acquire(first=first)
        order.append(name)

    tasks = [asyncio.create_task(caller(name)) for name in ("b", "c")]
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(caller("a-retry", first=True)), asyncio.create_task(caller("d"))]
    await asyncio.gather(*tasks)
    assert order == ["a-retry", "b", "c", "d"]


async def test_a_start_granted_to_a_caller_cancelled_before_using_it_is_given_back() -> None:
    limiter = PacingLimiter(interval_s=10)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter._next_start = 0.0  # its turn comes (as the timer would make it) ...
    limiter._wake()
    waiter.cancel()  # ... and it goes away before it could use it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.starts == 1 and limiter.delay_s() == 0, "the next caller may start at once"
