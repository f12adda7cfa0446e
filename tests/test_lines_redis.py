"""The Redis line's own promises (the shared ones are in test_lines_contract.py): several instances
on one line, dead instances, and a view whose cost does not grow with the line."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from guestqueue.errors import ClientLimit, LineFull
from guestqueue.lines.base import Joiner
from guestqueue.lines.redis.boundary import text
from guestqueue.lines.redis.line import RedisLine
from guestqueue.lines.redis.places import RedisPlaces
from guestqueue.lines.redis.records import REQUEST_TTL_S
from guestqueue.lines.redis.wake import REORDERED
from guestqueue.tickets import Flight, Status, Ticket
from guestqueue.upstream import WorkflowRequest

ENDING = {"t": "error", "code": "interrupted", "message": "Ask again.", "detail": None}


def flights(n: int, tag: str = "q") -> list[Flight]:
    return [Flight(None, [], WorkflowRequest(f"{tag}{i}", f"{tag}{i}")) for i in range(n)]


@asynccontextmanager
async def instances(url: str, prefix: str, *names: str, **settings: float) -> AsyncIterator[list[RedisLine]]:
    """One RedisLine per name, each with its own client, sharing one line."""
    options = {"max_size": 1000, "max_concurrent": 1, "interval_s": 0.0, "instance_ttl_s": 1.0, **settings}
    async with AsyncExitStack() as stack:
        lines: list[RedisLine] = []
        for name in names:
            client = aioredis.from_url(url)
            stack.push_async_callback(client.aclose)
            line = RedisLine(client, prefix=prefix, instance_id=name, **options)  # type: ignore[arg-type]
            await line.register({"host": "test", "pid": len(lines), "started_at": time.time()})
            stack.push_async_callback(line.close)
            lines.append(line)
        yield lines


def die(line: RedisLine) -> None:
    """As SIGKILL would: its heartbeat stops, nothing is given back."""
    line.halt()


async def test_one_fifo_across_instances_whichever_runs_the_flight(redis_url: str, redis_prefix: str) -> None:
    # One slot: the order of the grants is the order the workers see (with two, two grants could
    # reach their workers in either order).
    async with instances(redis_url, redis_prefix, "A", "B") as (a, b):
        admitted = flights(6)
        for n, flight in enumerate(admitted):
            await (a if n % 2 else b).admit(flight)
        started: list[str] = []

        async def work(line: RedisLine) -> None:
            while True:
                flight = await line.next()
                started.append(flight.request.query)
                await asyncio.sleep(0.02)
                await line.finish(flight)

        workers = [asyncio.create_task(work(line)) for line in (a, b, a, b)]
        while len(started) < 6:
            await asyncio.sleep(0.01)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        assert started == [f.request.query for f in admitted]


async def test_joining_keeps_the_request_and_wakes_every_instance_in_the_same_script(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "A") as [line]:
        listener = aioredis.from_url(redis_url)
        pubsub = listener.pubsub()
        await pubsub.subscribe(line.keys.wake)
        try:
            await pubsub.get_message(timeout=1)  # the subscription's confirmation
            plain, urgent = flights(2)
            plain.rank = 1  # the line's second tier: the first (rank 0) starts before it
            assert await line.admit(plain) == 1
            assert await line.admit(urgent) == 1, "a higher tier joins ahead"
            for flight in (plain, urgent):
                assert 0 < await listener.ttl(line.keys.request(flight.id)) <= REQUEST_TTL_S
            heard = [await pubsub.get_message(timeout=1) for _ in range(2)]
            assert [m["data"] for m in heard if m] == [b"admit", REORDERED.encode()]
        finally:
            await pubsub.aclose()
            await listener.aclose()


async def test_a_dead_instances_call_that_said_nothing_goes_back_first(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "dead", "B", "C") as (dead, b, c):
        running, waiting = flights(2)
        await dead.admit(running)
        assert (await dead.next()).id == running.id
        await b.admit(waiting)
        die(dead)
        # The one slot is the dead instance's until its lease (1 s) runs out; then its call, which
        # had sent nothing, is back at its old number before anything starts: ahead of `waiting`.
        began = time.monotonic()
        got = await asyncio.wait_for(b.next(), 5)
        assert got.id == running.id and 0.5 < time.monotonic() - began < 3
        assert got.request.query == running.request.query
        found = await asyncio.gather(*(line.end_dead_calls(ENDING, 60) for line in (b, c)))
        assert found == [[], []], "nothing left for a survivor to end"


async def test_a_dead_instances_call_that_had_answered_goes_to_one_survivor(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "dead", "B", "C") as (dead, b, c):
        running, waiting = flights(2)
        await dead.admit(running)
        assert (await dead.next()).id == running.id
        stream = dead.keys.flight_events(running.id)
        for event in ({"t": "started", "n": 0}, {"t": "chunk", "text": "half", "n": 1}):
            await dead._redis.xadd(stream, {"e": json.dumps(event)})
        await b.admit(waiting)
        die(dead)
        # Its guests saw part of an answer: it must not run again. The slot frees, `waiting` starts,
        # and exactly one survivor ends the call `interrupted`, numbered after its last chunk.
        got = await asyncio.wait_for(b.next(), 5)
        assert got.id == waiting.id
        found = await asyncio.gather(*(line.end_dead_calls(ENDING, 60) for line in (b, c)))
        assert sorted(found) == [[], [running.id]], "exactly one survivor ends it"
        last: Any = await b._redis.xrevrange(stream, count=1)
        assert json.loads(last[0][1][b"e"]) == {**ENDING, "n": 2}
        assert await b._redis.exists(b.keys.request(running.id)) == 0, "its request is over"
        assert await c.end_dead_calls(ENDING, 60) == [], "and ended once"
        # requeue_front (a stopping instance's call) puts a flight back at its old number.
        (later,) = flights(1, tag="later")
        await c.admit(later)
        await b.requeue_front(got)
        view = await c.view()
        assert view.position(got.id) == 1 and view.position(later.id) == 2


async def test_an_instance_whose_lease_ran_out_cannot_put_back_a_call_another_one_runs_now(
    redis_url: str, redis_prefix: str
) -> None:
    # Found by the forgetful-Redis chaos run: a waiting room's session could not open on a slot
    # the instance's lease had lost meanwhile; putting the flight back in line then took it from
    # the instance that had started it since (its visitor let in twice, or turned away).
    async with instances(redis_url, redis_prefix, "stalled", "B") as (stalled, b):
        (flight,) = flights(1)
        await stalled.admit(flight)
        mine = await stalled.next()
        die(stalled)  # its lease runs out: the call, which said nothing, goes back first, to B
        got = await asyncio.wait_for(b.next(), 5)
        assert got.id == flight.id
        await stalled.requeue_front(mine)  # the stalled instance comes back and would give it back
        assert (await b.view()).position(flight.id) == 0, "not in line again: B runs it"
        owner = await b._redis.hget(b.keys.slots, flight.id)
        assert owner is not None and text(owner).startswith("B "), "B's slot is still B's"


async def test_a_view_costs_the_same_whatever_the_length_of_the_line(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "A", max_size=5000) as (line,):
        client = aioredis.from_url(redis_url)

        async def commands_per_view() -> int:
            """The fewest of three: the server is shared, and another client's command (a lease
            beat, a follower's read) can only add to a count, never take from it."""
            counts = []
            for _ in range(3):
                before = await client.info("commandstats")
                await line.view()
                after = await client.info("commandstats")
                counts.append(
                    sum(int(v["calls"]) for v in after.values()) - sum(int(v["calls"]) for v in before.values())
                )
            return min(counts)

        for flight in flights(10):
            await line.admit(flight)
        small = await commands_per_view()
        for flight in flights(1000, tag="more"):
            await line.admit(flight)
        large = await commands_per_view()
        await client.aclose()
        assert large == small, f"{small} commands for 10 waiting, {large} for 1010"


async def test_a_freed_slot_starts_the_next_flight_on_another_instance_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "A", "B") as (a, b):
        delays = []
        for flight in flights(30):
            await a.admit(flight)
        held = await a.next()
        for _ in range(29):
            waiter = asyncio.create_task(b.next())
            await asyncio.sleep(0.02)  # B is waiting for the slot
            freed = time.monotonic()
            await a.finish(held)
            held = await waiter
            delays.append(time.monotonic() - freed)
            a, b = b, a
        await a.finish(held)
        # Woken by Redis pub/sub, not by the 0.5 s fallback poll.
        assert statistics.median(delays) < 0.05, sorted(delays)


async def test_a_request_record_is_written_by_its_holder_only_and_never_after_its_ending(
    redis_url: str, redis_prefix: str
) -> None:
    """Issue 21 point 1: a write that lands late (from an instance the guest moved away from, or a
    `processing` write overtaken by the ending) must not make a finished request look running, nor
    take the guest back: the next instance would replay or repeat its ending."""
    async with instances(redis_url, redis_prefix, "a", "b") as (line_a, line_b):
        client = aioredis.from_url(redis_url)
        try:
            a = RedisPlaces(client, line_a.keys, "a")
            b = RedisPlaces(client, line_b.keys, "b")
            ticket = Ticket("once", "guest")
            await a.record(ticket, "f1")
            assert (await b.claim(ticket.id)) is not None  # the guest resumed on b
            ticket.start()
            await a.record(ticket, None, event_id=3)  # a's late word: dropped
            record = await b.load(ticket.id)
            assert record is not None and (record.holder, record.status) == ("b", Status.QUEUED)
            await b.record(ticket, None, event_id=3)
            ticket.end(Status.COMPLETED)
            ticket.events.publish("workflow_complete", {"request_id": ticket.id})
            ending = b.record(ticket, None)
            ticket.status = Status.PROCESSING  # a write that was overtaken by the ending
            await asyncio.gather(ending, b.record(ticket, None, event_id=3))
            record = await b.load(ticket.id)
            assert record is not None and record.status is Status.COMPLETED
            assert record.terminal is not None and record.terminal[0] == "workflow_complete"
        finally:
            await client.aclose()


async def test_a_caller_meeting_a_rebuild_under_way_waits_until_this_instance_gave_back_its_share(
    redis_url: str, redis_prefix: str
) -> None:
    """A beat learns Redis's new epoch before it gives back this instance's share: a waiting room's
    session opened with that epoch meanwhile found no slot, and its visitor was turned away (chaos
    scenario 8). Whoever meets the rebuild waits for it."""
    async with instances(redis_url, redis_prefix, "A") as [line]:
        giving_back, release = asyncio.Event(), asyncio.Event()

        async def slow_give_back() -> None:
            giving_back.set()
            await release.wait()

        line.on_forgotten.append(slow_give_back)
        old = line.epoch
        # Each test's keys are its own prefix on the session's server, and tests in one process run
        # one at a time: forgetting everything touches only this test.
        await line._redis.flushall()
        rebuild = asyncio.create_task(line.notice(old))
        await asyncio.wait_for(giving_back.wait(), 5)
        assert line.epoch != old, "the new epoch is known before the share is given back"
        waiters = [asyncio.create_task(line.notice(old)), asyncio.create_task(line.settled())]
        await asyncio.sleep(0.1)
        assert not any(w.done() for w in waiters), "they wait for the share"
        release.set()
        await asyncio.wait_for(asyncio.gather(rebuild, *waiters), 5)


async def test_a_lease_runs_out_only_while_someone_beats(redis_url: str, redis_prefix: str) -> None:
    """A gap in every instance's heartbeat longer than a lease is Redis's (asleep, unreachable, back
    from a restart with its data), not the instances': a call running then keeps its slot. On main,
    the first script after such a gap took it for a dead instance's (a second call, or `interrupted`)."""
    async with instances(redis_url, redis_prefix, "a", "b") as (line_a, line_b):
        first, second = flights(2)
        await line_a.admit(first)
        await line_b.admit(second)
        assert (await line_a.next()).id == first.id  # a runs the one slot's call
        for line in (line_a, line_b):
            die(line)  # nobody beats, as while Redis slept
        await asyncio.sleep(1.5)  # more than the 1 s lease
        assert await line_b.end_dead_calls(ENDING, 60) == []
        assert len((await line_b.view()).running_s) == 1, "a's call still holds the slot"


async def test_a_redis_stall_shorter_than_a_lease_takes_no_call_from_a_live_instance(
    redis_url: str, redis_prefix: str
) -> None:
    # Redis asleep for 1.2 s of a 1.5 s lease: instance a's lease runs out meanwhile (its last beat
    # came 0.5 s before b's), though nobody could beat. Before, only a stall longer than a whole
    # lease was forgiven: a's silent call was taken for an orphan and asked again on b (a
    # duplicate upstream call, seen in chaos scenario 8).
    async with instances(redis_url, redis_prefix, "a", "b", instance_ttl_s=1.5) as (a, b):
        [flight] = flights(1, "stall")
        await a.admit(flight)
        started = await asyncio.wait_for(a.next(), 5)
        a.halt()
        b.halt()
        await a.notice(a.epoch)  # a beats...
        await asyncio.sleep(0.5)
        await b.notice(b.epoch)  # ...and b, the last beat before Redis sleeps
        client = aioredis.from_url(redis_url)
        try:
            await client.execute_command("DEBUG", "SLEEP", "1.2")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        view = await b.view()
        assert view.active == 1 and view.position(started.id) == 0, "a's call is still a's, not back in line"
        assert await b.end_dead_calls(ENDING, 60) == []


async def test_a_joiners_client_count_and_place_record_land_with_its_admission(
    redis_url: str, redis_prefix: str
) -> None:
    # Issue 24: joining a shared line was three round trips (the count, the admission, the record).
    async with instances(redis_url, redis_prefix, "A", max_size=1) as [line]:  # 2 fit: one would start now
        redis, places = aioredis.from_url(redis_url), None
        try:
            places = RedisPlaces(redis, line.keys, "A")
            first, second, third = (Ticket(f"q{n}", "client-1", max_wait_s=30.0) for n in range(3))
            [flight] = flights(1)
            assert await line.admit(flight, Joiner(first, 2)) == 1
            record = await places.load(first.id)
            assert record is not None and (record.flight_id, record.holder, record.status) == (
                flight.id,
                "A",
                Status.QUEUED,
            )
            assert record.number == flight.number > 0 and record.max_wait_s == 30.0 and record.client == "client-1"
            assert await redis.get(line.keys.client("client-1")) == b"1"
            assert await redis.smembers(line.keys.holders(flight.id)) == {b"A"}
            assert first.id.encode() in await redis.smembers(line.keys.held_requests("A"))
            with pytest.raises(ClientLimit):  # its client's one place is taken: nothing joins
                await line.admit(flights(1, "r")[0], Joiner(second, 1))
            await line.admit(flights(1, "s")[0], Joiner(second, 2))
            with pytest.raises(LineFull):  # the line is full: the client's count is not taken
                await line.admit(flights(1, "t")[0], Joiner(third, 5))
            assert await redis.get(line.keys.client("client-1")) == b"2"
            assert (await line.view()).size == 2
        finally:
            await redis.aclose()
