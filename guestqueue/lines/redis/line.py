"""The line shared by several instances, on Redis (GUEST_REDIS_URL; Valkey works the same).

Design. The line belongs to Redis, not to a process: any instance may run any
flight, and a guest's place does not depend on the process holding its
connection. As in AWS's waiting room, a counter (``INCR``) numbers every
admitted flight; the waiting flights are a sorted set scored by that number,
and each flight's request is a hash, so whichever instance starts it can run
it. Starting is ONE atomic script (``scripts/line_start.lua``): "the flight at the global
front starts now, on this instance" happens only if a global slot is free, no
retry is waiting for its turn, and pacing allows, all timed on Redis ``TIME``
(never a client clock). The script pops the front, records the slot as
``instance started_ms`` and moves the pacing mark; there is no window between
choosing the front and taking the slot in which another instance could slip in.

Slots are leases: each instance renews its lease (instances.py); an admission
line's sessions hold slots too, until their tokens' expiry (waitingroom/sessions.py). A slot whose instance's lease
ran out does not count: the next script puts its flight back at the front if it had said
nothing, else moves it to the orphans hash, where a survivor's
:meth:`RedisLine.end_dead_calls` ends it ``interrupted`` (lines/redis/relay.py). Like arq's
job keys, every key name comes from keys.py.

Waiting workers do not poll: changes to the line publish on a wake channel
(wake.py), and the workers knock on the start script one at a time (a local lock).

Invariants (tests/test_lines_contract.py and tests/test_lines_redis.py):
- a flight starts at most once, and only from the global front;
- at most ``max_concurrent`` slots held by live instances;
- two starts (retries included) at least ``interval_s`` apart on Redis's clock;
- a view is one round trip whatever the line's length.
Redis errors surface as :class:`~guestqueue.errors.LineUnavailable` (503 for
guests), and every background task keeps retrying until Redis answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from ...errors import ClientLimit, LineFull, LineUnavailable
from ...scripts import load_script
from ...stopping import stop_tasks
from ...tickets import Flight
from ..base import Joiner, LineView
from .boundary import UNAVAILABLE, Spawned, call, text
from .fair import FairCharges
from .instances import DeadInstances, Lease, instance_info
from .keys import Keys, admit_keys, view_keys
from .pacer import RedisPacer
from .rebuild import TIER_SPAN, Rebuild
from .records import REQUEST_TTL_S, joined_place, request_fields
from .running import RunningFlights
from .starts import Limits, Starts
from .wake import REORDERED, Wake

logger = logging.getLogger("guestqueue.lines.redis.line")


class RedisLine:
    """The shared line and pacer: lines/base.py's Line and Pacer on Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        instance_id: str,
        max_size: int,
        max_concurrent: int,
        interval_s: float,
        max_hold_s: float = 120.0,
        instance_ttl_s: float = 5.0,
        release_per_minute: int = 0,
        max_starvation_s: float = 120.0,
        starts_allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        """``starts_allowed``: the line's mode (gate.py), on every instance: no start while it says no."""
        self._redis = redis
        self.keys = Keys(prefix)
        self.instance_id = instance_id
        self.instance_ttl_s = instance_ttl_s
        self.limits = Limits(max_size, max_concurrent, round(interval_s * 1000), release_per_minute, max_starvation_s)
        self.pacer = RedisPacer(redis, self.keys, self.limits, max_hold_s=max_hold_s)
        self._spawn = Spawned("shared line: a write nobody waits for was not done")
        self._dead = DeadInstances(redis, self.keys)
        self.running = RunningFlights()  # the flights this instance runs, from their grant (starts.py)
        self.fair = FairCharges(redis, self.keys)  # a fair line's charges (fair.py)
        self.shares = self.fair.shares
        self._lease = Lease(redis, self.keys, instance_id, instance_ttl_s)
        self._wake = Wake(redis, self.keys.wake)
        self._starts = Starts(
            redis,
            self.keys,
            instance_id,
            self.limits,
            lease=self._lease,
            wake=self._wake,
            dead=self._dead,
            spawn=self._spawn,
            running=self.running,
            fair=self.fair,
            starts_allowed=starts_allowed,
        )
        self.on_rejoined = self._lease.on_rejoined  # (instances.py)
        self.on_forgotten = self._lease.on_forgotten
        self.on_reordered = self._wake.on_reordered  # (wake.py)
        self._admit = redis.register_script(load_script("line_admit"))
        self._view = redis.register_script(load_script("line_view"))
        self._rebuild = Rebuild(redis, self.keys, instance_id)
        self._listener: asyncio.Task[None] | None = None
        self._last_view = LineView({}, max_concurrent=max_concurrent)

    def __repr__(self) -> str:
        return f"RedisLine(prefix={self.keys.prefix!r}, instance={self.instance_id})"

    # -- this instance (instances.py) ----------------------------------------------

    async def register(self, info: dict[str, Any]) -> None:
        """Join the line's instances (and keep beating); listen for wake-ups."""
        await self._lease.register(info)
        self._listener = asyncio.create_task(self._wake.listen(), name="guestqueue-redis-wake")

    @property
    def epoch(self) -> str:
        return self._lease.epoch

    @property
    def good_until(self) -> float:
        return self._lease.good_until

    async def notice(self, known: str) -> None:
        """A script found Redis's epoch is not ``known``: beat now (which rebuilds, once)."""
        await self._lease.notice(known)

    async def settled(self) -> None:
        """Once no rebuild of a line Redis forgot is under way here (instances.py)."""
        await self._lease.settled()

    def halt(self) -> None:
        """Stop beating and listening, giving nothing back: what a killed process leaves (tests)."""
        self._lease.halt()
        if self._listener is not None:
            self._listener.cancel()

    async def close(self) -> None:
        await stop_tasks([self._listener])
        await self._spawn.stop()
        await self._lease.end()

    # -- Line ----------------------------------------------------------------------

    async def admit(self, flight: Flight, joiner: Joiner | None = None) -> int:
        joining = joined_place(self.keys, self.instance_id, flight, joiner)
        keys = [*admit_keys(self.keys, flight.id), *joining.keys]
        fair = [flight.share or "", self.fair.expected]  # ARGV[12..13]
        after = [REQUEST_TTL_S, self.keys.wake, REORDERED, *fair, *joining.args, *request_fields(flight)]  # ARGV[9..]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2 * self.instance_ttl_s
        while True:
            known = self.epoch
            reply = await self._call(
                self._admit,
                keys,
                [flight.id, *self.limits.for_admission(flight.rank), self.keys.prefix, known, *after],
            )
            kind = text(reply[0]) if isinstance(reply[0], bytes | str) else ""
            if kind == "full":
                raise LineFull("The line is full. Please try again in a little while.")
            if kind == "client_limit":
                raise ClientLimit("This client has no place left on the line.")
            if not kind:
                break
            # Redis forgot the line: the guest waits (a few seconds) until it is rebuilt, so that
            # it gets a number after everyone admitted before it.
            if loop.time() > give_up:
                raise LineUnavailable(UNAVAILABLE, retry_after_s=5)
            if kind == "forgotten":
                await self.notice(known)
            else:
                await asyncio.sleep(min(int(reply[1]), 250) / 1000)
        # One round trip: the script also woke every instance (REORDERED if it joined ahead of others).
        position, _, flight.number = (int(x) for x in reply)
        flight.position = position
        return position

    async def ahead_of(self, rank: int) -> int:
        """Flights of its tier or a higher one (scores below the next tier's); a promotion due but not
        yet applied (line_start.lua and line_view.lua apply them) is missed until the next view."""
        return int(await call(self._redis.zcount(self.keys.line, "-inf", f"({(rank + 1) * TIER_SPAN:.0f}")))

    async def leave(self, flight: Flight) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.line, flight.id)
            pipe.delete(self.keys.request(flight.id))
            pipe.publish(self.keys.wake, "leave")
            removed, _, _ = await call(pipe.execute())
        return bool(removed)

    async def next(self) -> Flight:
        return await self._starts.next()

    async def start(self, flight: Flight) -> float:
        return 0.0  # next() granted the slot and the pacing turn in the same script

    async def finish(self, flight: Flight) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.slots, flight.id)
            pipe.delete(self.keys.request(flight.id))
            pipe.publish(self.keys.wake, "finish")
            await call(pipe.execute())

    async def view(self) -> LineView:
        keys = view_keys(self.keys)
        now, order, running, pace, held, infos = await self._call(
            self._view, keys, [self.keys.prefix, self.limits.release_per_minute]
        )
        now = int(now)
        self._last_view = LineView(
            {text(flight_id): n for n, flight_id in enumerate(order, start=1)},
            running_s=tuple(max(0.0, (now - int(started)) / 1000) for started in running),
            next_start_s=max(0.0, (int(pace) - now) / 1000),
            held_s=max(0.0, (int(held) - now) / 1000),
            max_concurrent=self.limits.max_concurrent,
            instances=tuple(instance_info(json.loads(text(raw))) for raw in infos),
        )
        return self._last_view

    def reconfigure(
        self,
        *,
        max_size: int,
        max_concurrent: int,
        interval_s: float,
        release_per_minute: int,
        max_starvation_s: float = 120.0,
    ) -> None:
        """New limits, at once: every instance applies the line's new spec within a second."""
        self.limits.max_size, self.limits.max_concurrent = max_size, max_concurrent
        self.limits.interval_ms, self.limits.release_per_minute = round(interval_s * 1000), release_per_minute
        self.limits.max_starvation_s = max_starvation_s

    def peek(self) -> LineView:
        return self._last_view

    # -- Pacer ---------------------------------------------------------------------

    async def hold(self, delay_s: float) -> None:
        await self.pacer.hold(delay_s)

    async def retry_turn(self) -> float:
        return await self.pacer.retry_turn()

    # -- dead instances --------------------------------------------------------------

    async def end_dead_calls(self, ending: dict[str, Any], stream_ttl_s: int) -> list[str]:
        """End with ``ending`` the calls of dead instances that had said something, once; their ids."""
        return await self._dead.end_calls(ending, stream_ttl_s)

    async def charge(self, flight: Flight, service: float) -> None:
        await self.fair.charge(flight, service)

    async def requeue_front(self, flight: Flight) -> None:
        """Put a flight back in line at its old number: ahead of everyone admitted after it."""
        await self._dead.requeue_front(flight, self.instance_id)

    # -- a line Redis forgot -----------------------------------------------------------

    async def rebuild(self, running: list[Flight], waiting: list[Flight], ended: Sequence[str] = ()) -> int:
        """Give back this instance's share of a forgotten line (rebuild.py): ``running``, the flights
        it runs; ``waiting``, its guests' flights not started, each at its old number; ``ended``,
        ids of flights it ran that ended lately (they must not go back in line). Flights whose
        number this instance never knew are admitted again afterwards, behind. Returns the highest
        number given back."""
        now_mono = asyncio.get_running_loop().time()
        last = self._starts.last_mono
        ago_ms = -1 if last is None else round((now_mono - last) * 1000)
        top = await self._rebuild.give_back(
            running,
            waiting,
            list(ended),
            now_mono=now_mono,
            interval_ms=self.limits.interval_ms,
            last_start_ago_ms=ago_ms,
            max_starvation_s=self.limits.max_starvation_s,
        )
        unnumbered = [f for f in waiting if f.number == 0]
        if unnumbered:  # after the window (admit waits for it), not in the heartbeat that rebuilds
            self._spawn(self._admit_all(unnumbered))
        return top

    async def forgetting(self) -> bool:
        """Whether Redis forgot the line and the instances are still giving it back."""
        return await self._rebuild.under_way(self.epoch)

    async def _admit_all(self, flights: list[Flight]) -> None:
        for flight in flights:
            try:
                await self.admit(flight)
            except (LineFull, LineUnavailable) as exc:
                logger.warning("flight %s could not rejoin the line: %s", flight.id, exc)

    # -- plumbing --------------------------------------------------------------------

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await call(script(keys=keys, args=args))
