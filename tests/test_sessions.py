"""waitingroom/sessions.py at unit level: an admitted guest's session holds the line's slot until it
is completed, revoked or expires; its client's sessions count toward its limit; the admin API's new
keys hold at once. In one process (MemorySessions on a MemoryLine) and shared (RedisSessions on a
RedisLine and a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from guestqueue.errors import ClientLimit
from guestqueue.lines.memory import MemoryLine
from guestqueue.lines.redis.line import RedisLine
from guestqueue.linespec import Admission
from guestqueue.tickets import Flight, new_request_id
from guestqueue.upstream import WorkflowRequest
from guestqueue.waitingroom.redissessions import RedisSessions
from guestqueue.waitingroom.sessions import MemorySessions, Sessions
from guestqueue.waitingroom.tokens import InvalidToken, TokenSigner

from .conftest import wait_until

SECRET = "a-token-secret-of-at-least-32-characters!"
OTHER_SECRET = "another-token-secret-of-32-characters!!!"
ROOM = Admission(max_active=1, session_ttl_s=60.0, max_sessions_per_client=1, redirect_url="https://shop.example/in")


def new_flight(query: str = "let me in") -> Flight:
    return Flight(None, [], WorkflowRequest(new_request_id(), query))


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, message: str = "condition") -> None:
    """Until ``check`` gives True."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.05)


# -- in one process -----------------------------------------------------------------


@dataclass
class Memory:
    line: MemoryLine
    sessions: Sessions
    lengths: list[float]

    async def started(self, flight: Flight) -> Flight:
        """``flight`` admitted and started as a worker starts it: it holds a slot."""
        await self.line.admit(flight)
        taken = await self.line.next()
        await self.line.start(taken)
        return taken


@asynccontextmanager
async def memory_room(admission: Admission = ROOM) -> AsyncIterator[Memory]:
    line = MemoryLine(max_size=10, max_concurrent=admission.max_active, interval_s=0.0)
    sessions = Sessions("shop", admission, TokenSigner(secret=SECRET), MemorySessions(line))
    lengths: list[float] = []
    sessions.on_ended.append(lengths.append)
    try:
        yield Memory(line, sessions, lengths)
    finally:
        await sessions.close()
        await line.close()


async def test_a_session_opens_holds_its_slot_and_ends_when_completed() -> None:
    async with memory_room() as room:
        flight = await room.started(new_flight())
        request_id = flight.request.request_id
        grant = await room.sessions.admit(flight)
        assert grant["request_id"] == request_id and grant["redirect_url"] == "https://shop.example/in"
        claims = await room.sessions.verify(grant["token"])
        assert claims["sub"] == request_id and claims["aud"] == "shop"
        assert await room.sessions.state(request_id) == "active"
        assert room.sessions.counts() == {
            "sessions_active": 1,
            "admitted": 1,
            "completed": 0,
            "expired": 0,
            "revoked": 0,
        }
        assert room.line.peek().active == 1, "the session holds the line's slot"
        assert await room.sessions.complete(request_id) is True
        assert await room.sessions.complete(request_id) is False, "a session ends once"
        assert await room.sessions.state(request_id) == "completed"
        with pytest.raises(InvalidToken, match="the session is completed"):
            await room.sessions.verify(grant["token"])
        assert room.line.peek().active == 0, "its slot is free"
        assert room.sessions.counts()["completed"] == 1 and room.sessions.counts()["sessions_active"] == 0
        assert len(room.lengths) == 1 and room.lengths[0] >= 0


async def test_a_clients_open_sessions_and_places_count_toward_its_limit() -> None:
    async with memory_room(Admission(max_active=2, max_sessions_per_client=2)) as room:
        flight = await room.started(new_flight())
        request_id = flight.request.request_id
        grant = await room.sessions.admit(flight)
        await room.sessions.admitted("client-1", request_id, grant["expires_at"])
        await room.sessions.check_client("client-1", 0)  # one session of two
        with pytest.raises(ClientLimit, match=r"already have 2 places.*at most 2") as refused:
            await room.sessions.check_client("client-1", 1)  # and one place in line
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        await room.sessions.check_client("client-2", 1)  # another client has its own count
        await room.sessions.complete(request_id)
        await room.sessions.check_client("client-1", 1)


async def test_a_session_ends_at_its_tokens_expiry_and_frees_its_slot() -> None:
    async with memory_room(Admission(max_active=1, session_ttl_s=0.2)) as room:
        flight = await room.started(new_flight())
        grant = await room.sessions.admit(flight)
        assert grant["expires_at"] <= time.time() + 1.5
        await until(lambda: _state_is(room.sessions, flight, "expired"), message="the session's expiry")
        assert room.line.peek().active == 0
        assert room.sessions.counts()["expired"] == 1 and len(room.lengths) == 1


async def test_a_revoked_token_ends_its_session() -> None:
    async with memory_room() as room:
        flight = await room.started(new_flight())
        grant = await room.sessions.admit(flight)
        jti = (await room.sessions.verify(grant["token"]))["jti"]
        assert await room.sessions.revoke("no-such-jti") is False
        assert await room.sessions.revoke(jti) is True
        assert await room.sessions.state(flight.request.request_id) == "revoked"
        assert await room.sessions.revoke(jti) is False
        assert room.line.peek().active == 0


async def test_reconfigure_changes_the_limits_the_tokens_and_what_verifies() -> None:
    async with memory_room(Admission(max_active=3, max_sessions_per_client=1, session_ttl_s=60.0)) as room:
        first = await room.started(new_flight())
        old = await room.sessions.admit(first)
        await room.sessions.admitted("client-1", first.request.request_id, old["expires_at"])
        with pytest.raises(ClientLimit):
            await room.sessions.check_client("client-1", 0)
        room.sessions.reconfigure(
            Admission(max_active=3, max_sessions_per_client=3, session_ttl_s=600.0), TokenSigner(secret=OTHER_SECRET)
        )
        await room.sessions.check_client("client-1", 1)  # 2 of 3 now
        second = await room.started(new_flight())
        new = await room.sessions.admit(second)
        assert new["expires_at"] >= time.time() + 590, "new tokens last the new session_ttl"
        assert "redirect_url" not in new
        assert (await room.sessions.verify(new["token"]))["sub"] == second.request.request_id
        with pytest.raises(InvalidToken, match="not valid"):
            await room.sessions.verify(old["token"])  # signed with the secret replaced


async def _state_is(sessions: Sessions, flight: Flight, state: str) -> bool:
    return await sessions.state(flight.request.request_id) == state


# -- shared through Redis -------------------------------------------------------------


@dataclass
class Shared:
    redis: aioredis.Redis
    line: RedisLine
    sessions: Sessions
    lengths: list[float]

    async def started(self, flight: Flight) -> Flight:
        """``flight`` admitted, then started by this instance (line_start.lua gave it a slot)."""
        await self.line.admit(flight)
        taken = await self.line.next()
        assert taken.id == flight.id
        return taken


@asynccontextmanager
async def redis_rooms(url: str, prefix: str, *names: str, admission: Admission = ROOM) -> AsyncIterator[list[Shared]]:
    """One instance per name, each with its own client, line and sessions (as runtime.py builds them)."""
    async with AsyncExitStack() as stack:
        rooms: list[Shared] = []
        for name in names:
            redis = aioredis.from_url(url)
            stack.push_async_callback(redis.aclose)
            line = RedisLine(
                redis,
                prefix=prefix,
                instance_id=name,
                max_size=10,
                max_concurrent=admission.max_active,
                interval_s=0.0,
                instance_ttl_s=1.0,
            )
            await line.register({"host": "test", "pid": len(rooms), "started_at": time.time()})
            stack.push_async_callback(line.close)
            store = RedisSessions(redis, line)
            store.start()
            line.on_forgotten.append(store.give_back)
            sessions = Sessions("shop", admission, TokenSigner(secret=SECRET), store)
            stack.push_async_callback(sessions.close)
            lengths: list[float] = []
            sessions.on_ended.append(lengths.append)
            rooms.append(Shared(redis, line, sessions, lengths))
        yield rooms


async def test_a_shared_session_holds_the_lines_slot_until_completed(redis_url: str, redis_prefix: str) -> None:
    async with redis_rooms(redis_url, redis_prefix, "A") as (room,):
        flight = await room.started(new_flight())
        request_id = flight.request.request_id
        grant = await room.sessions.admit(flight)
        assert (await room.sessions.verify(grant["token"]))["sub"] == request_id
        assert await room.sessions.state(request_id) == "active"
        await wait_until(lambda: room.sessions.counts()["sessions_active"] == 1, message="the sweep's count")
        assert room.sessions.counts()["admitted"] == 1
        await room.line.admit(next_flight := new_flight())
        waiting = asyncio.create_task(room.line.next())
        try:
            await asyncio.sleep(0.6)
            assert not waiting.done(), "the one slot is the session's"
            assert await room.sessions.complete(request_id) is True
            assert (await asyncio.wait_for(waiting, 5)).id == next_flight.id
        finally:
            waiting.cancel()
        assert await room.sessions.state(request_id) == "completed"
        with pytest.raises(InvalidToken, match="the session is completed"):
            await room.sessions.verify(grant["token"])
        assert len(room.lengths) == 1
        await wait_until(lambda: room.sessions.counts()["completed"] == 1, message="the sweep's count")


async def test_shared_sessions_count_toward_their_clients_limit_on_every_instance(
    redis_url: str, redis_prefix: str
) -> None:
    admission = Admission(max_active=2, max_sessions_per_client=1)
    async with redis_rooms(redis_url, redis_prefix, "A", "B", admission=admission) as (a, b):
        flight = await a.started(new_flight())
        request_id = flight.request.request_id
        grant = await a.sessions.admit(flight)
        await a.sessions.admitted("client-1", request_id, grant["expires_at"])
        with pytest.raises(ClientLimit):
            await b.sessions.check_client("client-1", 0)
        await b.sessions.check_client("client-2", 0)
        assert await b.sessions.complete(request_id) is True, "any instance ends it"
        assert await a.sessions.complete(request_id) is False, "once"
        await b.sessions.check_client("client-1", 0)


async def test_a_shared_session_expires_at_its_tokens_exp(redis_url: str, redis_prefix: str) -> None:
    async with redis_rooms(redis_url, redis_prefix, "A", admission=Admission(max_active=1, session_ttl_s=0.2)) as (
        room,
    ):
        flight = await room.started(new_flight())
        await room.sessions.admit(flight)
        await until(lambda: _state_is(room.sessions, flight, "expired"), message="the sweep's expiry")
        # The sweep reports the length once its script's reply is read, which may come after the
        # test's own read of the state: wait for it, then there is exactly one.
        await wait_until(lambda: len(room.lengths) >= 1, message="the sweep's report of the session's length")
        assert len(room.lengths) == 1
        await room.line.admit(after := new_flight())
        assert (await asyncio.wait_for(room.line.next(), 5)).id == after.id, "its slot is free"
        await wait_until(lambda: room.sessions.counts()["expired"] == 1, message="the sweep's count")


async def test_a_shared_session_is_given_back_to_a_redis_that_forgot_it(redis_url: str, redis_prefix: str) -> None:
    async with redis_rooms(redis_url, redis_prefix, "A") as (room,):
        flight = await room.started(new_flight())
        request_id = flight.request.request_id
        grant = await room.sessions.admit(flight)
        # Each test's keys are its own prefix on the session's server, and tests in one process run
        # one at a time: forgetting everything touches only this test.
        await room.redis.flushall()
        assert await room.sessions.state(request_id) is None
        # The next heartbeat (every 1/3 s) finds the line forgotten: the session is given back.
        await until(lambda: _state_is(room.sessions, flight, "active"), message="the session given back")
        assert (await room.sessions.verify(grant["token"]))["sub"] == request_id
        assert await room.redis.zcard(room.line.keys.sessions) == 1, "it holds a slot again"
        assert await room.sessions.complete(request_id) is True
