"""An admission line's sessions on Redis (several instances): each session's hash, the open ones
by expiry, each client's; opened, ended and swept by scripts (scripts/session_*.lua), so a slot is
given once whichever instance asks, and given back when Redis forgot them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..errors import LineUnavailable
from ..lines.redis.boundary import call, logged, subscribe, text, unavailable
from ..lines.redis.line import RedisLine
from ..scripts import load_script
from ..stopping import raise_if_cancelled, stop_tasks
from ..tickets import Flight
from .sessions import ENDINGS, MAX_COUNTED, ROOM_UNAVAILABLE, SWEEP_EVERY_S
from .tokens import Grant

logger = logging.getLogger("guestqueue.waitingroom.sessions")
OPEN_PATIENCE_S = 10.0  # a session's opening tries again this long while Redis fails (then: back in line)
OPEN_RETRY_S = 0.25


@dataclass(slots=True)
class _Issued:
    """A session this instance opened, as it would give it back to a Redis that forgot it."""

    flight_id: str
    jti: str
    exp_ms: int
    opened_ms: int
    client: str | None = None


class RedisSessions:
    """Sessions of a line shared through Redis (the keys under the line's prefix, keys.py).

    Each instance remembers the sessions it opened until they end (here, or anywhere: ends are
    announced) or expire, and gives them back when Redis forgot the line (:meth:`give_back`):
    never more than ``max_active`` sessions, and an admitted guest's token keeps verifying.
    """

    def __init__(self, redis: aioredis.Redis, line: RedisLine) -> None:
        self._redis, self._keys, self._line = redis, line.keys, line
        self._open_script = redis.register_script(load_script("session_open"))
        self._end_script = redis.register_script(load_script("session_end"))
        self._sweep_script = redis.register_script(load_script("session_sweep"))
        self._reopen_script = redis.register_script(load_script("session_reopen"))
        self._sweeper: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._issued: dict[str, _Issued] = {}  # request id -> a session opened here, not known ended
        self._counts = {"sessions_active": 0, **dict.fromkeys(("admitted", *ENDINGS), 0)}
        self.on_ended: Callable[[float], None] = lambda seconds: None

    def __repr__(self) -> str:
        return f"RedisSessions(prefix={self._keys.prefix!r})"

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="guestqueue-sessions-sweep")
        self._listener = asyncio.create_task(self._listen(), name="guestqueue-sessions-ended")

    async def open(self, flight: Flight, grant: Grant) -> bool:
        keys = self._keys
        exp_ms = round(grant.expires_at * 1000)
        give_up = asyncio.get_running_loop().time() + OPEN_PATIENCE_S
        while True:
            await self._line.settled()  # its slot may be on its way back to a forgetful Redis
            known = self._line.epoch
            try:
                opened = int(
                    await self._call(
                        self._open_script,
                        [
                            keys.slots,
                            keys.sessions,
                            keys.session(grant.request_id),
                            keys.session_jtis,
                            keys.session_totals,
                            keys.epoch,
                        ],
                        [flight.id, grant.jti, exp_ms, grant.request_id, known],
                    )
                )
            except LineUnavailable:  # Redis restarts or stalls: the slot is still ours for a lease
                if asyncio.get_running_loop().time() > give_up:
                    raise
                await asyncio.sleep(OPEN_RETRY_S)
                continue
            if opened >= 0 or asyncio.get_running_loop().time() > give_up:
                break
            await self._line.notice(known)  # its slot is given back, then the session opens on it
        if opened > 0:
            self._issued[grant.request_id] = _Issued(flight.id, grant.jti, exp_ms, round(time.time() * 1000))
        return opened > 0

    async def end(self, request_id: str, how: str) -> bool:
        length_ms = await self._call(
            self._end_script, [self._keys.session(request_id)], [how, self._keys.prefix, request_id]
        )
        self._issued.pop(request_id, None)
        if length_ms:
            self.on_ended(int(length_ms) / 1000)
        return bool(length_ms)

    async def by_jti(self, jti: str) -> str | None:
        value = await self._call(self._redis.hget, self._keys.session_jtis, jti)
        return None if value is None else text(value)

    async def state(self, request_id: str) -> str | None:
        value = await self._call(self._redis.hget, self._keys.session(request_id), "state")
        return None if value is None else text(value)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    async def note_client(self, client: str, request_id: str, expires_at: float) -> None:
        if (issued := self._issued.get(request_id)) is not None:
            issued.client = client
        key, expires_ms = self._keys.client_sessions(client), round(expires_at * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {request_id: expires_ms})
            pipe.pexpireat(key, expires_ms + 1000)
            # Not written, the client's limit is counted without it, for its length.
            await logged(pipe.execute(), f"session {request_id} not counted for its client")

    async def held_by(self, client: str) -> int:
        """The client's sessions still active (a few: it can hold no more than its limit)."""
        key = self._keys.client_sessions(client)
        now_ms = round(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.zrange(key, 0, MAX_COUNTED - 1)
            _, ids = await self._call(pipe.execute)
        if not ids:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id in ids:
                pipe.hget(self._keys.session(text(request_id)), "state")
            states = await self._call(pipe.execute)
        ended = [request_id for request_id, state in zip(ids, states, strict=True) if state != b"active"]
        if ended:
            await self._call(self._redis.zrem, key, *ended)
        return len(ids) - len(ended)

    async def _count(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._keys.sessions)
            pipe.hgetall(self._keys.session_totals)
            active, totals = await pipe.execute()
        named = {text(k): int(v) for k, v in totals.items()}
        self._counts = {"sessions_active": int(active), **{k: named.get(k, 0) for k in ("admitted", *ENDINGS)}}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                with unavailable(ROOM_UNAVAILABLE):
                    lengths = await self._sweep_script(
                        keys=[self._keys.sessions, self._keys.session_jtis], args=[self._keys.prefix]
                    )
                    for length_ms in lengths:
                        self.on_ended(int(length_ms) / 1000)
                    await self._count()
            except LineUnavailable as exc:
                raise_if_cancelled()
                logger.warning("session expiry sweep failed: %s", exc.__cause__)

    async def _listen(self) -> None:
        """Forget the sessions opened here that ended on any instance (not to give them back)."""
        channels = [self._keys.session_ended_channel]
        await subscribe(self._redis, channels, self._ended, "session ends not heard", pause_s=SWEEP_EVERY_S)

    async def _ended(self, message: dict[str, Any]) -> None:
        self._issued.pop(text(message["data"]), None)

    async def give_back(self) -> None:
        """Redis forgot the line: the unexpired sessions opened here hold their slots again (before
        the rebuild window closes, so nobody is let in on them) and their tokens verify again."""
        now_ms = round(time.time() * 1000)
        for request_id in [r for r, issued in self._issued.items() if issued.exp_ms <= now_ms]:
            del self._issued[request_id]
        keys = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, issued in self._issued.items():
                owner = f"s:{issued.jti} {issued.opened_ms}"
                client_key = keys.client_sessions(issued.client) if issued.client else keys.session(request_id)
                with unavailable(ROOM_UNAVAILABLE):
                    await self._reopen_script(  # queued in the pipeline
                        keys=[keys.sessions, keys.session(request_id), keys.session_jtis, client_key],
                        args=[owner, issued.flight_id, issued.exp_ms, issued.opened_ms, issued.jti, request_id],
                        client=pipe,
                    )
            await call(pipe.execute(), ROOM_UNAVAILABLE)
        if self._issued:
            logger.warning("%d sessions given back to a forgetful Redis", len(self._issued))

    async def close(self) -> None:
        await stop_tasks([self._sweeper, self._listener])

    async def _call(self, command: Any, *args: Any) -> Any:
        with unavailable(ROOM_UNAVAILABLE, retry_after_s=None):
            if args and isinstance(args[0], list):  # a script: keys, args
                return await command(keys=args[0], args=args[1])
            return await command(*args)
