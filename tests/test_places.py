"""lines/redis/places.py at unit level: each request's record in Redis, who holds it, the flights'
holders, the clients' counts, Idempotency-Keys, cancels and the places of dead instances.
Real RedisPlaces on a real redis-server; several instances are several RedisPlaces."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from guestqueue.events import ERROR
from guestqueue.lines.redis.boundary import text
from guestqueue.lines.redis.keys import Keys
from guestqueue.lines.redis.places import ABANDONED, RedisPlaces
from guestqueue.tickets import Flight, Status, Ticket
from guestqueue.upstream import WorkflowRequest


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def guest(query: str = "what?", client: str = "client-1", **fields: Any) -> tuple[Ticket, Flight]:
    """A ticket and the flight it rides, as the service admits them."""
    ticket = Ticket(query, client, **fields)
    flight = Flight(None, [ticket], WorkflowRequest(ticket.id, query, ticket.parameters, ticket.session_id))
    ticket.flight = flight
    return ticket, flight


async def heard(pubsub: aioredis.client.PubSub, timeout_s: float = 5.0) -> str:
    """The next message on a subscribed channel, as text."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            data: bytes = message["data"]
            return data.decode()
    raise AssertionError("nothing was published")


async def members(redis: aioredis.Redis, key: str) -> set[str]:
    return {text(m) for m in await redis.smembers(key)}


async def count(redis: aioredis.Redis, key: str) -> int:
    value = await redis.get(key)
    return int(text(value)) if value is not None else 0


async def test_a_record_holds_what_any_instance_needs_to_take_the_request_over(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    places = RedisPlaces(redis, keys, "A")
    ticket, flight = guest(parameters={"temperature": 0.2}, session_id="conv-1", idempotency_key="idem-1")
    flight.number, flight.rank = 7, 1
    await places.record(ticket, flight.id)
    record = await places.load(ticket.id)
    assert record is not None
    assert (record.flight_id, record.client, record.query) == (flight.id, "client-1", "what?")
    assert record.parameters == {"temperature": 0.2}
    assert (record.session_id, record.idempotency_key) == ("conv-1", "idem-1")
    assert record.status is Status.QUEUED and record.holder == "A" and record.terminal is None
    assert (record.number, record.rank) == (7, 1)
    assert record.summary()["status"] == "queued"
    assert await places.holder(ticket.id) == "A"
    assert await members(redis, keys.holders(flight.id)) == {"A"}
    assert await members(redis, keys.held_requests("A")) == {ticket.id}
    assert 0 < await redis.ttl(keys.ticket(ticket.id)) <= 3600
    assert await places.load("no-such-request") is None
    assert await places.holder("no-such-request") == ""


async def test_writes_of_one_request_land_in_the_order_they_were_made(redis: aioredis.Redis, redis_prefix: str) -> None:
    places = RedisPlaces(redis, Keys(redis_prefix), "A")
    guests = [guest(f"q{i}") for i in range(30)]
    writes = []
    for ticket, flight in guests:  # admission and start, one after the other, nothing awaited between
        writes.append(places.record(ticket, flight.id))
        ticket.start()
        writes.append(places.record(ticket, flight.id, event_id=3))
    await asyncio.gather(*writes)
    for ticket, _ in guests:
        record = await places.load(ticket.id)
        assert record is not None and record.status is Status.PROCESSING and record.started_event_id == 3


async def test_a_claim_names_the_new_holder_and_tells_the_old_one_on_the_moved_channel(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    a, b = RedisPlaces(redis, keys, "A"), RedisPlaces(redis, keys, "B")
    ticket, flight = guest()
    await a.record(ticket, flight.id)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.moved_channel)
        record = await b.claim(ticket.id)
        assert json.loads(await heard(pubsub)) == [ticket.id, "A", "B"]
    assert record is not None and record.holder == "B" and record.flight_id == flight.id
    assert await a.holder(ticket.id) == "B"
    assert await members(redis, keys.holders(flight.id)) == {"A", "B"}
    assert ticket.id in await members(redis, keys.held_requests("B"))
    assert await b.claim("no-such-request") is None


async def test_the_old_holders_late_write_does_not_take_the_request_back(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    a, b = RedisPlaces(redis, keys, "A"), RedisPlaces(redis, keys, "B")
    ticket, flight = guest()
    await a.record(ticket, flight.id)
    await b.claim(ticket.id)
    ticket.start()
    await a.record(ticket, flight.id)
    record = await a.load(ticket.id)
    assert record is not None and record.holder == "B" and record.status is Status.QUEUED


async def test_an_ended_record_keeps_its_ending(redis: aioredis.Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    places = RedisPlaces(redis, keys, "A")
    ticket, flight = guest()
    await places.record(ticket, flight.id)
    payload = {"request_id": ticket.id, "error": "It failed.", "code": "upstream_error"}
    event = ticket.events.publish(ERROR, payload)
    ticket.end(Status.FAILED, error="It failed.", error_code="upstream_error")
    await places.record(ticket, flight.id)
    record = await places.load(ticket.id)
    assert record is not None and record.status is Status.FAILED
    assert record.terminal == (ERROR, payload) and record.terminal_event_id == event.id
    assert record.summary()["error"] == "It failed." and record.summary()["error_code"] == "upstream_error"
    assert await members(redis, keys.held_requests("A")) == set(), "an ended request is no longer held"
    late = Ticket("what?", "client-1", id=ticket.id)  # a late write of the same request, still queued
    await places.record(late, flight.id)
    again = await places.load(ticket.id)
    assert again is not None and again.status is Status.FAILED and again.terminal == (ERROR, payload)


async def test_let_go_is_true_only_when_the_last_holder_leaves(redis: aioredis.Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    a, b = RedisPlaces(redis, keys, "A"), RedisPlaces(redis, keys, "B")
    ticket, flight = guest()
    await a.record(ticket, flight.id)
    await b.claim(ticket.id)
    assert await a.let_go(flight.id) is False, "B still holds a guest of it"
    assert await b.let_go(flight.id) is True
    alone, alone_flight = guest("alone")
    await a.record(alone, alone_flight.id)
    assert await a.let_go(alone_flight.id) is True


async def test_a_clients_slots_are_counted_on_every_instance_and_given_back(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    a, b = RedisPlaces(redis, keys, "A"), RedisPlaces(redis, keys, "B")
    assert await a.take_client_slot("c", 2) is True
    assert await b.take_client_slot("c", 2) is True
    assert await a.take_client_slot("c", 2) is False, "two on any instances is the limit"
    assert await b.take_client_slot("other", 2) is True, "each client has its own count"
    assert await count(redis, keys.client("c")) == 2, "a refused slot is not counted"
    await a.give_back_client_slot("c")
    assert await b.take_client_slot("c", 2) is True
    await a.give_back_client_slot("c")
    await b.give_back_client_slot("c")
    assert not await redis.exists(keys.client("c")), "a count down to zero is deleted"
    assert await a.take_client_slot("c", 1) is True


async def test_reserve_key_returns_the_first_owner_until_it_is_forgotten(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    a, b = RedisPlaces(redis, keys, "A"), RedisPlaces(redis, keys, "B")
    assert await a.reserve_key("c", "key-1", "req-1") == "req-1"
    assert await b.reserve_key("c", "key-1", "req-2") == "req-1", "the same key names the first request everywhere"
    assert await b.reserve_key("other-client", "key-1", "req-3") == "req-3", "keys are per client"
    await b.forget_key("c", "key-1", "req-2")  # not its request: the key stays req-1's
    assert await b.reserve_key("c", "key-1", "req-2") == "req-1"
    await a.forget_key("c", "key-1", "req-1")  # refused: the key may name the next request
    assert await b.reserve_key("c", "key-1", "req-2") == "req-2"


async def test_abandon_publishes_the_flight_on_the_cancel_channel(redis: aioredis.Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    places = RedisPlaces(redis, keys, "A")
    _, flight = guest()
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.cancel_channel)
        await places.abandon(flight)
        assert await heard(pubsub) == flight.id


async def test_reap_releases_the_places_of_instances_dead_past_the_grace(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    dead, live, survivor = (RedisPlaces(redis, keys, name) for name in ("dead", "live", "survivor"))
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    await redis.zadd(keys.instances, {"dead": now_ms - 5_000, "live": now_ms + 60_000})
    gone, gone_flight = guest("gone", client="c")
    kept, kept_flight = guest("kept", client="c")
    for places, ticket, flight in ((dead, gone, gone_flight), (live, kept, kept_flight)):
        assert await places.take_client_slot("c", 10)
        await places.record(ticket, flight.id)
        await redis.zadd(keys.line, {flight.id: 1})
        await redis.hset(keys.request(flight.id), "query", flight.request.query)
    assert await survivor.reap(60.0) == 0, "dead for 5 s: within a 60 s grace"
    assert await survivor.reap(1.0) == 1
    record = await survivor.load(gone.id)
    assert record is not None and record.status is Status.CANCELLED
    assert record.terminal == (ABANDONED[0], ABANDONED[1]) and record.summary()["error_code"] == "disconnected"
    assert await redis.zscore(keys.line, gone_flight.id) is None, "nobody holds its flight: it left the line"
    assert not await redis.exists(keys.request(gone_flight.id))
    assert await count(redis, keys.client("c")) == 1, "its client's slot was given back"
    assert await redis.zscore(keys.instances, "dead") is None
    assert not await redis.exists(keys.held_requests("dead"))
    still = await survivor.load(kept.id)
    assert still is not None and still.status is Status.QUEUED and still.holder == "live"
    assert await redis.zscore(keys.line, kept_flight.id) is not None
