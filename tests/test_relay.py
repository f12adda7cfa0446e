"""lines/redis/relay.py and follow.py at unit level: a flight's events carried from the instance that
runs it to the instance holding its guests, each once and in number order; cancels, moves, dead runners and a
Redis that forgot the line. Real RedisLine, RedisPlaces and redis-server; a recording sink."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import redis.asyncio as aioredis

from guestqueue.config import Settings
from guestqueue.flights import Flights
from guestqueue.lines.redis import relay as relay_module
from guestqueue.lines.redis.follow import FlightFollower
from guestqueue.lines.redis.line import RedisLine
from guestqueue.lines.redis.places import RedisPlaces
from guestqueue.lines.redis.relay import INTERRUPTED, FlightRelay
from guestqueue.positions import Positions
from guestqueue.tickets import Flight, Ticket, new_request_id
from guestqueue.upstream import WorkflowRequest

from .conftest import wait_until
from .redis_server import RedisServer
from .tcp_proxy import TcpProxy

Heard = tuple[str, Any]  # (what, its detail)


@dataclass
class Recorder:
    """A FlightSink that writes down what it hears and moves the flight as endings.py does."""

    flights: Flights
    heard: dict[str, list[Heard]] = field(default_factory=dict)

    def of(self, flight_id: str) -> list[Heard]:
        return self.heard.get(flight_id, [])

    def ended(self, flight_id: str) -> bool:
        return any(what not in ("started", "chunk") for what, _ in self.of(flight_id))

    def _note(self, flight: Flight, what: str, detail: Any = None) -> None:
        self.heard.setdefault(flight.id, []).append((what, detail))

    def on_started(self, flight: Flight) -> None:
        self.flights.started(flight)
        self._note(flight, "started")

    def emit_chunk(self, flight: Flight, text: str) -> None:
        flight.answer_parts.append(text)
        self._note(flight, "chunk", text)

    def back_to_line(self, flight: Flight) -> bool:
        return False

    def end_flight_completed(self, flight: Flight) -> None:
        self.flights.finished(flight)
        self._note(flight, "completed", list(flight.suggested_questions))

    def end_flight_timeout(self, flight: Flight) -> None:
        self.flights.finished(flight)
        self._note(flight, "timeout")

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None:
        self.flights.finished(flight)
        self._note(flight, "error", (code, message))

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None:
        self.flights.finished(flight)
        self._note(flight, "admitted", grant)

    async def release(self, flight: Flight) -> None:
        return None


@dataclass
class Instance:
    redis: aioredis.Redis
    line: RedisLine
    places: RedisPlaces
    flights: Flights
    sink: Recorder
    relay: FlightRelay
    follower: FlightFollower
    released: list[str]


@asynccontextmanager
async def instances(
    url: str, prefix: str, *names: str, via: dict[str, str] | None = None
) -> AsyncIterator[list[Instance]]:
    """One instance per name (its own client, line, places, flights, relay and follower), on one line,
    wired as runtime.py wires them; yields once every follower listens. ``via``: an instance's own
    URL for the same server (through a proxy a test may cut)."""
    async with AsyncExitStack() as stack:
        made: list[Instance] = []
        for name in names:
            redis = aioredis.from_url((via or {}).get(name, url))
            stack.push_async_callback(redis.aclose)
            line = RedisLine(
                redis,
                prefix=prefix,
                instance_id=name,
                max_size=100,
                max_concurrent=4,
                interval_s=0.0,
                instance_ttl_s=1.0,
            )
            await line.register({"host": "test", "pid": len(made), "started_at": time.time()})
            stack.push_async_callback(line.close)
            places = RedisPlaces(redis, line.keys, name)
            flights = Flights()
            sink = Recorder(flights)
            released: list[str] = []
            positions = Positions(Settings(), line, flights.waiting)
            running = line.running
            follower = FlightFollower(redis, line.keys, name, sink, flights, positions, running, released.append)
            relay = FlightRelay(redis, line, places, follower, running, lambda: 0.5)
            line.on_forgotten.append(relay.give_back)
            follower.start()
            stack.push_async_callback(follower.stop)
            relay.start()
            stack.push_async_callback(relay.stop)
            made.append(Instance(redis, line, places, flights, sink, relay, follower, released))
        keys = made[0].line.keys
        for channel in (keys.events_channel, keys.cancel_channel, keys.moved_channel):
            await eventually(partial(_listeners, made[0].redis, channel, len(made)), f"relays listening on {channel}")
        yield made


async def _listeners(redis: aioredis.Redis, channel: str, wanted: int) -> bool:
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count) >= wanted


async def eventually(check: Callable[[], Awaitable[bool]], message: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.02)


def new_flight(query: str = "q") -> Flight:
    return Flight(None, [], WorkflowRequest(new_request_id(), query))


def runners_copy(flight: Flight) -> Flight:
    """The same flight as the instance running it has it (lines/redis/line.py builds its own)."""
    return Flight(flight.key, [], flight.request, id=flight.id)


async def story(instance: Instance, flight_id: str) -> list[dict[str, Any]]:
    entries: list[Any] = await instance.redis.xrange(instance.line.keys.flight_events(flight_id)) or []
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def write(instance: Instance, flight_id: str, *events: dict[str, Any]) -> None:
    """As a runner would (relay_event.lua): append to the flight's stream, then announce it."""
    keys = instance.line.keys
    for event in events:
        await instance.redis.xadd(keys.flight_events(flight_id), {"e": json.dumps(event)})
    await instance.redis.publish(keys.events_channel, flight_id)


async def test_a_flight_run_on_one_instance_reaches_its_guests_on_another_in_order(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "runner", "follower") as (runner, follower):
        held = new_flight()
        follower.flights.joined(held)
        ran = runners_copy(held)
        runner.relay.on_started(ran)
        for text in ("Hel", "lo", "!"):
            runner.relay.emit_chunk(ran, text)
        ran.suggested_questions = ["And then?"]
        runner.relay.end_flight_completed(ran)
        runner.relay.end_flight_timeout(ran)  # a second ending is no ending
        await wait_until(lambda: follower.sink.ended(held.id), message="the follower's ending")
        assert follower.sink.of(held.id) == [
            ("started", None),
            ("chunk", "Hel"),
            ("chunk", "lo"),
            ("chunk", "!"),
            ("completed", ["And then?"]),
        ]
        assert held.answer_parts == ["Hel", "lo", "!"] and held.finished
        assert runner.sink.heard == {}, "the runner holds none of its guests: nothing applied there"
        await eventually(lambda: _has(runner, held.id, 5), "the whole story in the stream")
        assert [(e["t"], e["n"]) for e in await story(runner, held.id)] == [
            ("started", 0),
            ("chunk", 1),
            ("chunk", 2),
            ("chunk", 3),
            ("completed", 4),
        ]


async def _has(instance: Instance, flight_id: str, entries: int) -> bool:
    return int(await instance.redis.xlen(instance.line.keys.flight_events(flight_id))) >= entries


async def test_a_duplicate_and_a_gap_in_the_stream_are_applied_once_in_number_order(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "follower") as (follower,):
        held = new_flight()
        follower.flights.joined(held)
        await write(
            follower,
            held.id,
            {"t": "started", "n": 0},
            {"t": "chunk", "text": "a", "n": 1},
            {"t": "chunk", "text": "a", "n": 1},  # sent twice (a retry after a lost reply)
            {"t": "chunk", "text": "c", "n": 3},  # before 2: a gap
        )
        await wait_until(lambda: ("chunk", "a") in follower.sink.of(held.id), message="the first chunk")
        await asyncio.sleep(0.3)
        assert follower.sink.of(held.id) == [("started", None), ("chunk", "a")], "nothing after a gap"
        await write(follower, held.id, {"t": "chunk", "text": "b", "n": 2}, {"t": "completed", "n": 4})
        await wait_until(lambda: follower.sink.ended(held.id), message="the ending")
        assert follower.sink.of(held.id) == [
            ("started", None),
            ("chunk", "a"),
            ("chunk", "b"),
            ("chunk", "c"),
            ("completed", []),
        ]
        await follower.redis.publish(follower.line.keys.events_channel, held.id)  # announced again
        await asyncio.sleep(0.2)
        assert len(follower.sink.of(held.id)) == 5


async def test_a_story_written_out_of_order_is_applied_in_number_order(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "follower") as (follower,):
        held = new_flight()
        follower.flights.joined(held)
        await write(
            follower,
            held.id,
            {"t": "started", "n": 0},
            {"t": "chunk", "text": "c", "n": 3},
            {"t": "chunk", "text": "b", "n": 2},
            {"t": "chunk", "text": "a", "n": 1},
        )
        await wait_until(lambda: len(follower.sink.of(held.id)) >= 4, message="the whole story so far")
        await write(follower, held.id, {"t": "timeout", "n": 4})
        await wait_until(lambda: follower.sink.ended(held.id), message="the ending")
        assert follower.sink.of(held.id) == [
            ("started", None),
            ("chunk", "a"),
            ("chunk", "b"),
            ("chunk", "c"),
            ("timeout", None),
        ]


async def test_a_flight_run_here_for_guests_held_here_is_applied_at_once_and_once(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "alone") as (alone,):
        held = new_flight()
        alone.flights.joined(held)
        ran = runners_copy(held)
        alone.relay.on_started(ran)
        alone.relay.emit_chunk(ran, "now")
        # Applied before anything reached Redis (no await between).
        assert alone.sink.of(held.id) == [("started", None), ("chunk", "now")]
        alone.relay.end_flight_error(ran, "upstream_error", "It failed.")
        await eventually(lambda: _has(alone, held.id, 3), "the story in the stream")
        await asyncio.sleep(0.3)  # the channel's messages came back: nothing applied twice
        assert alone.sink.of(held.id) == [
            ("started", None),
            ("chunk", "now"),
            ("error", ("upstream_error", "It failed.")),
        ]


async def test_a_guest_who_joined_after_the_call_began_hears_what_it_missed_first(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "alone") as (alone,):
        ran = new_flight()
        alone.relay.on_started(ran)
        alone.relay.emit_chunk(ran, "one ")
        held = runners_copy(ran)  # its admission finished only now
        alone.flights.joined(held)
        alone.relay.emit_chunk(ran, "two")
        alone.relay.end_flight_completed(ran)
        assert alone.sink.of(held.id) == [
            ("started", None),
            ("chunk", "one "),
            ("chunk", "two"),
            ("completed", []),
        ]


async def test_a_cancel_published_by_places_abandon_stops_the_runners_job(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "runner", "follower") as (runner, follower):
        left, kept = new_flight("left"), new_flight("kept")
        for flight in (left, kept):
            flight.job = asyncio.create_task(asyncio.sleep(60))
            runner.relay.on_started(flight)
        try:
            await follower.places.abandon(left)
            assert left.job is not None and kept.job is not None
            await wait_until(left.job.done, message="the abandoned flight's job to stop")
            assert left.job.cancelled() and left.finished
            await asyncio.sleep(0.2)
            assert not kept.job.done() and not kept.finished, "only the abandoned flight stops"
        finally:
            for flight in (left, kept):
                if flight.job is not None:
                    flight.job.cancel()


async def test_a_claim_elsewhere_makes_the_old_holder_release_the_request(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "old", "new") as (old, new):
        ticket = Ticket("q", "client")
        flight = Flight(None, [ticket], WorkflowRequest(ticket.id, "q"))
        ticket.flight = flight
        await old.places.record(ticket, flight.id)
        assert await new.places.claim(ticket.id) is not None
        await wait_until(lambda: old.released == [ticket.id], message="the old holder's release")
        await asyncio.sleep(0.1)
        assert new.released == [], "the new holder keeps it"


async def test_a_claim_by_the_holder_itself_does_not_make_it_release_the_request(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "old", "new") as (old, new):
        ticket = Ticket("q", "client")
        flight = Flight(None, [ticket], WorkflowRequest(ticket.id, "q"))
        ticket.flight = flight
        await old.places.record(ticket, flight.id)
        assert await new.places.claim(ticket.id) is not None  # [request, old, new]
        assert await new.places.claim(ticket.id) is not None  # [request, new, new]: it holds it already
        await wait_until(lambda: old.released == [ticket.id], message="the old holder's release")
        await asyncio.sleep(0.3)
        assert new.released == [], "the holder let go of the request it holds"


async def test_a_runner_stopping_before_the_first_chunk_puts_the_flight_back_else_it_ends_interrupted(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "runner", "follower") as (runner, follower):
        silent, spoke = new_flight("silent"), new_flight("spoke")
        for flight in (silent, spoke):
            follower.flights.joined(flight)
        silent_ran, spoke_ran = runners_copy(silent), runners_copy(spoke)
        runner.relay.on_started(silent_ran)
        runner.relay.on_started(spoke_ran)
        runner.relay.emit_chunk(spoke_ran, "half")
        for ran in (silent_ran, spoke_ran):
            runner.relay.end_flight_error(ran, "shutdown", "The request was stopped. Please try again.")
        assert silent_ran.back_in_line and silent_ran.finished, "another instance runs it from the front"
        assert not spoke_ran.back_in_line
        await wait_until(lambda: follower.sink.ended(spoke.id), message="the interrupted ending")
        assert follower.sink.of(spoke.id)[-1] == ("error", ("interrupted", INTERRUPTED))
        await asyncio.sleep(0.3)
        assert follower.sink.of(silent.id) == [("started", None)], "no ending: it runs again elsewhere"
        assert [e["t"] for e in await story(runner, silent.id)] == ["started"]


async def test_a_dead_runners_calls_go_back_to_the_front_or_end_interrupted(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "dead", "survivor") as (dead, survivor):
        silent, spoke = new_flight("silent"), new_flight("spoke")
        for flight in (silent, spoke):
            survivor.flights.joined(flight)
            await survivor.line.admit(flight)
        running = [await dead.line.next(), await dead.line.next()]
        assert {f.id for f in running} == {silent.id, spoke.id}
        for ran in running:
            dead.relay.on_started(ran)
            if ran.id == spoke.id:
                dead.relay.emit_chunk(ran, "half")
        await eventually(lambda: _has(dead, spoke.id, 2), "the dead runner's chunk in the stream")
        await dead.relay.stop()  # then it dies, as SIGKILL would: no lease, nothing given back
        await dead.follower.stop()
        dead.line.halt()
        # Its lease (1 s) runs out; the survivor's janitor (every 0.5 s) takes its calls.
        await wait_until(lambda: survivor.sink.ended(spoke.id), timeout_s=10, message="the interrupted ending")
        assert survivor.sink.of(spoke.id) == [
            ("started", None),
            ("chunk", "half"),
            ("error", ("interrupted", INTERRUPTED)),
        ]
        assert (await survivor.line.view()).position(silent.id) == 1, "the silent call waits at the front again"
        assert not survivor.sink.ended(silent.id)


async def test_a_runner_dying_between_its_last_chunk_and_its_ending_leaves_the_call_held_for_recovery(
    redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "FLUSH_TIMEOUT_S", 0.2)  # its shutdown flush gives up at once
    async with TcpProxy(redis_server.port) as proxy:
        async with instances(redis_server.url, redis_prefix, "dying", "survivor", via={"dying": proxy.url}) as (
            dying,
            survivor,
        ):
            held = new_flight()
            survivor.flights.joined(held)
            await survivor.line.admit(held)
            ran = await dying.line.next()
            dying.relay.on_started(ran)
            dying.relay.emit_chunk(ran, "all of it")
            await eventually(lambda: _has(dying, held.id, 2), "the last chunk in the stream")
            await proxy.cut()  # its ending cannot reach Redis; then it dies
            dying.relay.end_flight_completed(ran)
            await dying.relay.release(ran)  # as its worker does after the ending
            await dying.relay.stop()
            await dying.follower.stop()
            dying.line.halt()
            slot = await survivor.redis.hget(survivor.line.keys.slots, held.id)
            assert isinstance(slot, bytes) and slot.startswith(b"dying "), "the dead runner's slot is still held"
            # Its lease (1 s) runs out; the survivor's janitor ends the call its guests wait for.
            await wait_until(lambda: survivor.sink.ended(held.id), timeout_s=10, message="the interrupted ending")
            assert survivor.sink.of(held.id) == [
                ("started", None),
                ("chunk", "all of it"),
                ("error", ("interrupted", INTERRUPTED)),
            ]


async def test_an_ending_frees_its_slot_in_the_same_script_unless_a_session_holds_it(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "runner") as [runner]:
        answered, admitted = new_flight("answered"), new_flight("admitted")
        for flight in (answered, admitted):
            await runner.line.admit(flight)
        ran = {(flight := await runner.line.next()).id: flight for _ in range(2)}
        slots = runner.line.keys.slots
        for flight in ran.values():
            runner.relay.on_started(flight)
        runner.relay.emit_chunk(ran[answered.id], "all")
        runner.relay.end_flight_completed(ran[answered.id])
        runner.relay.end_flight_admitted(ran[admitted.id], {"token": "t"})
        await runner.relay.release(ran[answered.id])  # as its worker does (an admitted flight's does not)
        await eventually(lambda: _has(runner, answered.id, 3), "the ending in the stream")
        await eventually(lambda: _has(runner, admitted.id, 2), "the admission in the stream")
        assert await runner.redis.hexists(slots, answered.id) == 0, "freed with its ending"
        assert await runner.redis.exists(runner.line.keys.request(answered.id)) == 0
        assert await runner.redis.hexists(slots, admitted.id) == 1, "the session's now"


async def test_a_call_stopped_with_nobody_left_to_tell_frees_its_slot_without_an_ending(
    redis_url: str, redis_prefix: str
) -> None:
    async with instances(redis_url, redis_prefix, "runner") as [runner]:
        await runner.line.admit(new_flight())
        flight = await runner.line.next()
        runner.relay.on_started(flight)
        flight.finished = True  # running.py's stop: its last guest left, its job is cancelled
        await runner.relay.release(flight)
        assert await runner.redis.hexists(runner.line.keys.slots, flight.id) == 0
        await asyncio.sleep(0.1)
        assert [e["t"] for e in await story(runner, flight.id)] == ["started"]


async def test_give_back_writes_the_story_again_after_redis_forgot_the_line(redis_url: str, redis_prefix: str) -> None:
    async with instances(redis_url, redis_prefix, "runner", "follower") as (runner, follower):
        held = new_flight("running")
        follower.flights.joined(held)
        ran = runners_copy(held)
        runner.relay.on_started(ran)
        runner.relay.emit_chunk(ran, "one ")
        await wait_until(lambda: len(follower.sink.of(held.id)) == 2, message="the first chunk followed")
        over = new_flight("ended")
        runner.relay.on_started(over)
        runner.relay.emit_chunk(over, "all")
        runner.relay.end_flight_completed(over)
        await eventually(lambda: _has(runner, over.id, 3), "the ended flight's story")
        # Each test's keys are its own prefix on the session's server, and tests in one process run
        # one at a time: forgetting everything touches only this test.
        await runner.redis.flushall()
        runner.relay.emit_chunk(ran, "two ")  # meets the forgotten line: the runner rebuilds, then sends it
        await eventually(lambda: _has(runner, over.id, 3), "the ended flight's story written again")
        assert [e["t"] for e in await story(runner, over.id)] == ["started", "chunk", "completed"]
        slot = await runner.redis.hget(runner.line.keys.slots, ran.id)
        assert isinstance(slot, bytes) and slot.startswith(b"runner "), "the running call holds its slot again"
        await wait_until(lambda: len(follower.sink.of(held.id)) == 3, message="the second chunk followed")
        runner.relay.emit_chunk(ran, "three")
        runner.relay.end_flight_completed(ran)
        await wait_until(lambda: follower.sink.ended(held.id), message="the ending after the rebuild")
        await asyncio.sleep(0.2)
        assert follower.sink.of(held.id) == [
            ("started", None),
            ("chunk", "one "),
            ("chunk", "two "),
            ("chunk", "three"),
            ("completed", []),
        ]


@pytest.mark.parametrize("runner_first", [True, False], ids=["runner-first", "guests-first"])
async def test_a_flight_that_ran_is_not_put_back_in_line_by_an_instance_that_had_not_heard(
    redis_url: str, redis_prefix: str, runner_first: bool
) -> None:
    """Redis forgot the line just after a call started or ended, before the guests' instance heard:
    that instance still counts the flight as waiting and gives it back so, and whichever instance
    rebuilds first, the flight must not stand in line again (it would be asked twice)."""
    async with instances(redis_url, redis_prefix, "runner", "home") as (runner, home):
        running, ended, waiting = new_flight("running"), new_flight("ended"), new_flight("waiting")
        for number, flight in enumerate((running, ended, waiting), 1):
            flight.number = number  # as the home instance knew them at admission
        ran = runners_copy(running)
        runner.relay.on_started(ran)
        done = runners_copy(ended)
        runner.relay.on_started(done)
        runner.relay.end_flight_completed(done)
        await eventually(lambda: _has(runner, ended.id, 2), "the ended flight's story")
        await runner.redis.flushall()
        # The runner gives its share back as it does in a server: its next beat finds the line forgotten.
        gives: list[Callable[[], Awaitable[Any]]] = [
            partial(runner.line.notice, runner.line.epoch),
            partial(home.line.rebuild, [], [running, ended, waiting]),
        ]
        for give in gives if runner_first else reversed(gives):
            await give()
        view = await home.line.view()
        assert view.position(waiting.id) == 1
        assert (view.position(running.id), view.position(ended.id)) == (0, 0), "a flight that ran stands in line"
        runner.relay.end_flight_completed(ran)
