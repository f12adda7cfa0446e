"""The line contract (guestqueue/lines/base.py), one suite for both lines: in memory and on Redis.

Each test drives the line as the worker pool does (``next`` → ``start`` → ``finish``)
and checks one invariant. The Redis line runs on a real redis-server with a fresh
key prefix per test.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from guestqueue.errors import LineFull
from guestqueue.lines.memory import MemoryLine
from guestqueue.lines.redis.line import RedisLine
from guestqueue.stopping import stop_tasks
from guestqueue.tickets import Flight
from guestqueue.upstream import WorkflowRequest

MakeLine = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make_line(request: pytest.FixtureRequest) -> MakeLine:
    """``async with make_line(max_size=…, max_concurrent=…, interval_s=…) as line``."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory(**settings: Any) -> AsyncIterator[Any]:
            line = MemoryLine(**{"max_hold_s": 120.0, **settings})
            yield line
            await line.close()

        return memory
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")

    @asynccontextmanager
    async def shared(**settings: Any) -> AsyncIterator[Any]:
        client = aioredis.from_url(url)
        line = RedisLine(client, prefix=prefix, instance_id="A", **{"max_hold_s": 120.0, **settings})
        await line.register({"host": "test", "pid": 1, "started_at": time.time()})
        try:
            yield line
        finally:
            await line.close()
            await client.aclose()

    return shared


def flights(n: int) -> list[Flight]:
    return [Flight(None, [], WorkflowRequest(f"r{i}", f"q{i}")) for i in range(n)]


class Starts:
    """A worker loop as the pool runs it, recording who started when."""

    def __init__(self, line: Any, workers: int = 1, hold_s: float = 0.0) -> None:
        self.line, self.hold_s = line, hold_s
        self.started: list[tuple[str, float]] = []
        self.running = 0
        self.most_running = 0
        self.tasks = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        while True:
            flight = await self.line.next()
            await self.line.start(flight)
            self.started.append((flight.id, time.monotonic()))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            await asyncio.sleep(self.hold_s)
            self.running -= 1
            await self.line.finish(flight)

    async def until(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.started) < count:
            assert time.monotonic() < deadline, f"only {len(self.started)} of {count} started"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        # As the pool stops its workers: redis-py may swallow a cancel that lands inside a call.
        await stop_tasks(self.tasks)

    def order(self) -> list[str]:
        return [flight_id for flight_id, _ in self.started]

    def gaps(self) -> list[float]:
        return [b - a for (_, a), (_, b) in itertools.pairwise(self.started)]


async def test_flights_start_in_admission_order(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=2, interval_s=0) as line:
        waiting = flights(8)
        for flight in waiting:
            await line.admit(flight)
        starts = Starts(line, workers=2, hold_s=0.01)
        await starts.until(8)
        await starts.stop()
        assert starts.order() == [f.id for f in waiting]


async def test_a_flight_that_left_never_starts_and_the_others_move_up(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        a, b, c, d = flights(4)
        for flight in (a, b, c, d):
            await line.admit(flight)
        assert await line.leave(b) is True
        assert await line.leave(b) is False, "not waiting any more"
        view = await line.view()
        assert [view.position(f.id) for f in (a, b, c, d)] == [1, 0, 2, 3] and view.size == 3
        starts = Starts(line)
        await starts.until(3)
        await asyncio.sleep(0.1)
        await starts.stop()
        assert starts.order() == [a.id, c.id, d.id]


async def test_the_line_is_bounded_but_a_free_slot_does_not_take_room(make_line: MakeLine) -> None:
    async with make_line(max_size=2, max_concurrent=1, interval_s=0) as line:
        first, second, third, fourth = flights(4)
        # The idle slot would start the first at once: it is not "waiting".
        for flight in (first, second, third):
            await line.admit(flight)
        with pytest.raises(LineFull):
            await line.admit(fourth)
        assert (await line.view()).size == 3
        await line.leave(second)
        assert await line.admit(fourth) == 3


async def test_at_most_max_concurrent_run_at_once(make_line: MakeLine) -> None:
    async with make_line(max_size=50, max_concurrent=3, interval_s=0) as line:
        for flight in flights(12):
            await line.admit(flight)
        starts = Starts(line, workers=6, hold_s=0.05)
        await starts.until(12)
        view = await line.view()
        await starts.stop()
        assert starts.most_running == 3
        assert view.active <= 3


async def test_starts_are_paced(make_line: MakeLine) -> None:
    interval_s = 0.15
    async with make_line(max_size=20, max_concurrent=4, interval_s=interval_s) as line:
        for flight in flights(5):
            await line.admit(flight)
        starts = Starts(line, workers=4)
        await starts.until(5)
        await starts.stop()
        # Read on the test's clock after each start returns: on a loaded machine the process may be
        # descheduled between a start and that read (16 ms seen beside a CPU hog), which shortens
        # the gap after it by as much. Each gap, and the span of all five (where such delays do not
        # add up), are checked to within one such delay; unpaced starts would be ~0 s apart.
        gaps = starts.gaps()
        assert min(gaps) >= interval_s - 0.03, gaps
        assert sum(gaps) >= 4 * interval_s - 0.03, gaps


async def test_a_hold_delays_every_start_up_to_its_cap(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=2, interval_s=0, max_hold_s=0.4) as line:
        await line.hold(math.nan)
        await line.hold(-5)
        began = time.monotonic()
        await line.hold(3600)  # an upstream asking for an hour gets the cap
        assert 0.3 < (await line.view()).held_s <= 0.4
        (flight,) = flights(1)
        await line.admit(flight)
        starts = Starts(line)
        await starts.until(1)
        await starts.stop()
        assert 0.35 <= starts.started[0][1] - began < 1.5


async def test_a_retry_goes_before_the_flights_waiting_in_line(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=2, interval_s=0.2) as line:
        running, waiting = flights(2)
        await line.admit(running)
        got = await line.next()
        await line.start(got)
        await line.admit(waiting)
        starts = Starts(line)  # wants to start `waiting` as soon as pacing allows
        retried_at = time.monotonic() + await line.retry_turn()
        await starts.until(1)
        await starts.stop()
        assert retried_at < starts.started[0][1], "the retry had the earlier turn"
        assert starts.started[0][1] - retried_at >= 0.19, "and the next one still kept the pace"


async def test_a_view_is_exact(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=2, interval_s=0) as line:
        one, two, three = flights(3)
        for flight in (one, two, three):
            await line.admit(flight)
        first = await line.next()
        await line.start(first)
        await asyncio.sleep(0.05)
        view = await line.view()
        assert first.id == one.id
        assert (view.position(one.id), view.position(two.id), view.position(three.id)) == (0, 1, 2)
        assert view.size == 2 and view.active == 1 and view.running_s[0] >= 0.04
        await line.finish(first)
        assert (await line.view()).active == 0


async def test_a_worker_cancelled_while_waiting_loses_no_flight_and_no_turn(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0.3) as line:
        early, late = flights(2)
        await line.admit(early)
        starts = Starts(line)
        await starts.until(1)
        await line.admit(late)
        await asyncio.sleep(0.05)  # the worker now waits for late's pacing turn
        await starts.stop()
        starts = Starts(line)
        await starts.until(1, timeout_s=5)
        await starts.stop()
        assert starts.order() == [late.id], "the flight the cancelled worker was about to take still starts"


async def test_the_release_rate_caps_the_starts_of_any_minute(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=4, interval_s=0, release_per_minute=3) as line:
        for flight in flights(5):
            await line.admit(flight)
        starts = Starts(line, workers=4)
        await starts.until(3)
        await asyncio.sleep(0.5)
        assert len(starts.started) == 3, "a fourth start within the minute"
        view = await line.view()
        assert 58 < view.next_start_s <= 60, "the view says when the oldest start ages out (for the ETA)"
        await starts.stop()


async def test_nothing_starts_while_the_line_is_held_and_order_is_kept(make_line: MakeLine) -> None:
    held = True
    async with make_line(max_size=20, max_concurrent=2, interval_s=0, starts_allowed=lambda: not held) as line:
        waiting = flights(4)
        for flight in waiting:
            await line.admit(flight)
        starts = Starts(line, workers=2, hold_s=0.01)
        await asyncio.sleep(0.8)
        assert starts.started == [] and (await line.view()).size == 4
        held = False
        await starts.until(4)
        await starts.stop()
        assert starts.order() == [f.id for f in waiting]


async def test_new_limits_hold_at_once(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        for flight in flights(6):
            await line.admit(flight)
        starts = Starts(line, workers=3, hold_s=0.3)
        await starts.until(1)
        line.reconfigure(max_size=20, max_concurrent=3, interval_s=0, release_per_minute=0)
        await starts.until(6)
        assert starts.most_running == 3
        await starts.stop()


def tiered(*ranks: int) -> list[Flight]:
    out = flights(len(ranks))
    for flight, rank in zip(out, ranks, strict=True):
        flight.rank = rank
    return out


async def test_higher_tiers_start_first_fifo_within_a_tier_and_positions_say_so(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        free1, free2, paid1, paid2 = tiered(1, 1, 0, 0)
        for flight in (free1, free2, paid1, paid2):
            await line.admit(flight)
        view = await line.view()
        assert [view.position(f.id) for f in (paid1, paid2, free1, free2)] == [1, 2, 3, 4]
        starts = Starts(line, workers=1, hold_s=0.01)
        await starts.until(4)
        await starts.stop()
        assert starts.order() == [paid1.id, paid2.id, free1.id, free2.id]


async def test_a_lower_tier_flight_that_waited_long_enough_goes_before_newer_higher_tiers(
    make_line: MakeLine,
) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0, max_starvation_s=0.5) as line:
        free, paid_soon, paid_later = tiered(1, 0, 0)
        await line.admit(free)
        await line.admit(paid_soon)
        assert (await line.view()).position(free.id) == 2, "passed by a newer higher tier, for now"
        await asyncio.sleep(0.6)
        await line.admit(paid_later)
        view = await line.view()
        assert [view.position(f.id) for f in (free, paid_soon, paid_later)] == [1, 2, 3]
        starts = Starts(line, workers=1, hold_s=0.01)
        await starts.until(3)
        await starts.stop()
        assert starts.order() == [free.id, paid_soon.id, paid_later.id]


async def test_a_newcomer_is_told_how_many_would_start_before_it(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        for flight in tiered(1, 1, 0, 1):
            await line.admit(flight)
        assert [await line.ahead_of(rank) for rank in (0, 1, 2)] == [1, 4, 4]


# -- fair shares (fairness.py): the same order on both lines ----------------------------------


def of_share(share: str, n: int, rank: int = 0) -> list[Flight]:
    made = flights(n)
    for i, flight in enumerate(made):
        flight.share, flight.rank = share, rank
        flight.request = WorkflowRequest(f"{share}{i}", f"{share} q{i}")
    return made


async def test_a_fair_line_starts_the_least_served_share_first_and_keeps_each_share_in_order(
    make_line: MakeLine,
) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        heavy, light = of_share("heavy", 5), of_share("light", 2)
        for flight in heavy:
            await line.admit(flight)
        # The light share joins behind five heavy flights, at the front's counter: one heavy call
        # starts before it, and the two shares take turns after.
        assert await line.admit(light[0]) == 2
        assert await line.admit(light[1]) == 4
        expected = [heavy[0], light[0], heavy[1], light[1], heavy[2], heavy[3], heavy[4]]
        view = await line.view()
        assert [view.position(f.id) for f in expected] == list(range(1, 8)), "positions as the line stands"
        starts = Starts(line, workers=1, hold_s=0.01)
        await starts.until(7)
        await starts.stop()
        assert starts.order() == [f.id for f in expected]


async def test_a_share_that_idled_rejoins_at_the_least_counter_waiting_and_earns_no_credit(
    make_line: MakeLine,
) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        heavy = of_share("heavy", 6)
        for flight in heavy:
            await line.admit(flight)
        starts = Starts(line, workers=1, hold_s=0.01)
        await starts.until(4)
        await starts.stop()
        # Four heavy calls were served while the light share asked nothing: it does not get four
        # turns in a row for it, it joins just after the heavy share's next flight.
        light = of_share("light", 2)
        for flight in light:
            await line.admit(flight)
        view = await line.view()
        assert [view.position(f.id) for f in (heavy[4], light[0], heavy[5], light[1])] == [1, 2, 3, 4]


async def test_a_call_that_cost_more_than_expected_moves_its_share_back(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        a, b = of_share("a", 2), of_share("b", 2)
        for flight in (a[0], a[1], b[0], b[1]):
            await line.admit(flight)
        view = await line.view()
        assert [view.position(f.id) for f in (a[0], b[0], a[1], b[1])] == [1, 2, 3, 4]
        first = await line.next()
        await line.start(first)
        assert first.id == a[0].id and first.share == "a" and first.charged
        await line.finish(first)
        await line.charge(first, first.charged + 10_000)  # a long answer: ten thousand characters more
        view = await line.view()
        assert [view.position(f.id) for f in (b[0], b[1], a[1])] == [1, 2, 3], "a's next waits behind b's"
        await line.charge(first, 99_999)  # charged once: a second report changes nothing
        view = await line.view()
        assert [view.position(f.id) for f in (b[0], b[1], a[1])] == [1, 2, 3]


async def test_tiers_stay_strict_on_a_fair_line_and_fifo_flights_are_untouched(make_line: MakeLine) -> None:
    async with make_line(max_size=20, max_concurrent=1, interval_s=0) as line:
        free_light = of_share("light", 1, rank=1)[0]
        paid_heavy = of_share("heavy", 3, rank=0)
        for flight in (free_light, *paid_heavy):
            await line.admit(flight)
        view = await line.view()
        assert [view.position(f.id) for f in (*paid_heavy, free_light)] == [1, 2, 3, 4]
        starts = Starts(line, workers=1, hold_s=0.01)
        await starts.until(4)
        await starts.stop()
        assert starts.order() == [f.id for f in (*paid_heavy, free_light)]
