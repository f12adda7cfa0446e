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

Slots are leases: each instance renews its lease (a sorted set of expiry
times) every ``instance_ttl_s / 3``; an admission line's sessions hold slots
too, until their tokens' expiry (waitingroom/sessions.py). A slot whose instance's lease
ran out does not count, and the next start moves it to the orphans hash, from which exactly
one survivor takes it (:meth:`RedisLine.dead_flights`) to put the flight back
at the front or end it (lines/redis/relay.py decides: had a chunk been sent?). Like arq's
job keys, every key name comes from keys.py.

Waiting workers do not poll: admissions, leaves and finished calls publish on
a wake channel; one subscriber per instance wakes its workers, which knock on
the script one at a time (a local lock). A short fallback timer (the pacing
wait, at most 0.5 s) covers a lost message or a lease that just expired.

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
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from ...errors import LineFull, LineUnavailable
from ...scripts import load_script
from ...stopping import raise_if_cancelled, stop_tasks
from ...tickets import Flight
from ...upstream import WorkflowRequest
from ..base import LineView
from .boundary import UNAVAILABLE, Spawned, call, logged, subscribe, text
from .keys import Keys

logger = logging.getLogger("guestqueue.lines.redis.line")

REORDERED = "reordered"  # the wake-up message of a flight that joined ahead of others
TIER_SPAN = 10**12  # as in scripts/aging.lua: a score is rank * TIER_SPAN + the flight's number
MAX_WAKE_WAIT_S = 0.5  # a worker re-knocks at least this often (lost wake-up, expired lease)
REQUEST_TTL_S = 86_400  # a request hash outlives any wait (GUEST_MAX_WAIT_SEC is far shorter)


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
    ) -> None:
        self._redis = redis
        self.max_starvation_s = max_starvation_s
        self.release_per_minute = release_per_minute
        self.starts_allowed: Callable[[], bool] = lambda: True  # the line's mode (gate.py), on every instance
        self.keys = Keys(prefix)
        self.instance_id = instance_id
        self.max_size = max_size
        self.max_concurrent = max_concurrent
        self.interval_ms = round(interval_s * 1000)
        self.max_hold_s = max_hold_s
        self.instance_ttl_s = instance_ttl_s
        self._info: dict[str, str] = {}
        self._registered = False
        # Called when a flight joined ahead of others (a higher tier), here or on another instance.
        self.on_reordered: list[Callable[[], None]] = []
        # Called when Redis had forgotten this instance (its lease ran out while it was cut off):
        # e.g. put its guests' flights back in line.
        self.on_rejoined: list[Callable[[], Awaitable[None]]] = []
        # Called when Redis forgot the whole line (restarted empty, flushed): give back this
        # instance's share (flights, records, events, sessions) within the rebuild window.
        self.on_forgotten: list[Callable[[], Awaitable[None]]] = []
        self.epoch = ""  # the line's epoch as this instance knows it ("" before registering)
        self._noticing = asyncio.Lock()  # one rebuild at a time, whoever noticed first
        self.last_start_mono: float | None = None  # this instance's last start (to pace a rebuilt line)
        # When Redis last answered a heartbeat as the same line (loop clock): what was written before
        # it (less a margin) had been read by the other instances when Redis forgot.
        self.good_until = 0.0
        self._admit = redis.register_script(load_script("line_admit"))
        self._start = redis.register_script(load_script("line_start"))
        self._hold = redis.register_script(load_script("line_hold"))
        self._retry = redis.register_script(load_script("line_retry_turn"))
        self._view = redis.register_script(load_script("line_view"))
        self._beat = redis.register_script(load_script("line_heartbeat"))
        self._orphans = redis.register_script(load_script("line_take_orphans"))
        self._rebuild = redis.register_script(load_script("line_rebuild"))
        self._knock = asyncio.Lock()  # one local worker at a time asks Redis for a start
        self._woken = asyncio.Event()
        self._nappers: set[asyncio.Future[None]] = set()  # workers waiting for a wake-up (_nap)
        self._tasks: list[asyncio.Task[None]] = []
        self._spawn = Spawned("shared line: a write nobody waits for was not done")
        self._last_view = LineView({}, max_concurrent=max_concurrent)

    def __repr__(self) -> str:
        return f"RedisLine(prefix={self.keys.prefix!r}, instance={self.instance_id})"

    # -- instances -----------------------------------------------------------------

    async def register(self, info: dict[str, Any]) -> None:
        """Join the line's instances (and start the heartbeat that keeps this one alive)."""
        self._info = {k: str(v) for k, v in info.items()}
        await self._heartbeat_once()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="guestqueue-redis-heartbeat"))
        self._tasks.append(asyncio.create_task(self._listen(), name="guestqueue-redis-wake"))

    async def _heartbeat_once(self) -> None:
        async with self._noticing:
            pairs = [x for kv in self._info.items() for x in kv]
            fresh, epoch, forgot = await self._call(
                self._beat,
                self._beat_keys(),
                [self.instance_id, round(self.instance_ttl_s * 1000), self.epoch, secrets.token_hex(8), *pairs],
            )
            self.epoch = text(epoch)
            now = asyncio.get_running_loop().time()
            if forgot:
                logger.warning(
                    "Redis forgot the shared line (restarted empty, or flushed): instance %s gives "
                    "back its flights, guests and sessions",
                    self.instance_id,
                )
                for give_back in self.on_forgotten:
                    await give_back()
            elif fresh and self._registered:  # we were taken for dead (cut off or stalled past our lease)
                logger.warning(
                    "instance %s was taken for dead (no beat for %.1f s, its lease is %g s): a call "
                    "it runs that said nothing may be asked again elsewhere",
                    self.instance_id,
                    now - self.good_until,
                    self.instance_ttl_s,
                )
                for rejoin in self.on_rejoined:
                    await rejoin()
            elif fresh:
                logger.info("instance %s registered on the shared line", self.instance_id)
            self._registered = True
            self.good_until = now

    async def notice(self, known: str) -> None:
        """A script found Redis's epoch is not ``known``: beat now (which rebuilds, once)."""
        if self.epoch == known:  # nobody has handled it yet
            await self._heartbeat_once()

    def _beat_keys(self) -> list[str]:
        return [
            self.keys.instances,
            self.keys.instance_info(self.instance_id),
            self.keys.epoch,
            self.keys.rebuilding,
            self.keys.beat,
        ]

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.instance_ttl_s / 3)
            try:
                await self._heartbeat_once()  # a Redis restarted empty finds us again here
            except LineUnavailable as exc:
                raise_if_cancelled()
                logger.warning("heartbeat failed: %s", exc)

    async def _listen(self) -> None:
        """Wake local workers whenever any instance changes the line or frees a slot."""
        await subscribe(self._redis, [self.keys.wake], self._woken_by, "wake-ups lost")

    async def _woken_by(self, message: dict[str, Any]) -> None:
        self._wake_workers()
        if message["data"] == REORDERED.encode():
            for hook in self.on_reordered:
                hook()

    async def close(self) -> None:
        await stop_tasks(self._tasks)
        await self._spawn.stop()
        # The lease ends now rather than vanishing: guests this instance handed off keep their
        # places for the reconnect grace, then other instances release them (places.py).
        await logged(
            self._beat(keys=self._beat_keys(), args=[self.instance_id, 0, self.epoch, secrets.token_hex(8)]),
            "could not end this instance's lease",
        )

    # -- Line ----------------------------------------------------------------------

    async def admit(self, flight: Flight) -> int:
        request = flight.request
        fields = {
            "key": flight.key or "",
            "request_id": request.request_id,
            "query": request.query,
            "parameters": json.dumps(dict(request.parameters)),
            "session_id": request.session_id or "",
        }
        keys = [
            self.keys.slots,
            self.keys.instances,
            self.keys.orphans,
            self.keys.line,
            self.keys.seq,
            self.keys.pace,
            self.keys.request(flight.id),
            self.keys.aging,
            self.keys.epoch,
            self.keys.rebuilding,
        ]
        pairs = [x for kv in fields.items() for x in kv]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2 * self.instance_ttl_s
        while True:
            known = self.epoch
            reply = await self._call(
                self._admit,
                keys,
                [
                    flight.id,
                    self.max_size,
                    self.max_concurrent,
                    self.interval_ms,
                    flight.rank,
                    round(self.max_starvation_s * 1000),
                    self.keys.prefix,
                    known,
                    *pairs,
                ],
            )
            kind = text(reply[0]) if isinstance(reply[0], bytes | str) else ""
            if kind == "full":
                raise LineFull("The line is full. Please try again in a little while.")
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
        position, size, flight.number = (int(x) for x in reply)
        await logged(self._expire_request(flight.id), f"flight {flight.id}: its request's expiry not set")
        # Joining ahead of others (a higher tier) moves them back: every instance tells its guests now.
        await logged(
            self._redis.publish(self.keys.wake, REORDERED if position < size else "admit"),
            "the other instances not woken",
        )
        flight.position = position
        return position

    async def _expire_request(self, flight_id: str) -> None:
        await self._redis.expire(self.keys.request(flight_id), REQUEST_TTL_S)

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
        while True:
            if not self.starts_allowed():  # paused: ask for no start (the script would take the slot)
                await asyncio.sleep(MAX_WAKE_WAIT_S)
                continue
            async with self._knock:
                self._woken.clear()
                try:
                    reply = await self._try_start()
                except LineUnavailable:
                    raise_if_cancelled()
                    await asyncio.sleep(MAX_WAKE_WAIT_S)
                    continue
                kind, value = reply
                if isinstance(value, Flight):
                    self.last_start_mono = asyncio.get_running_loop().time()
                    return value
                if kind == "forgotten":
                    await self.notice(value)
                    continue
                wait_s = MAX_WAKE_WAIT_S
                if kind == "pace":
                    wait_s = min(wait_s, int(value) / 1000)
                if not self._woken.is_set():  # a wake-up during the call: knock again at once
                    await self._nap(wait_s)

    def _wake_workers(self) -> None:
        self._woken.set()
        for napper in self._nappers:
            _wake(napper)

    async def _nap(self, wait_s: float) -> None:
        """Until a wake-up or ``wait_s``: a future and a timer (as aiolimiter's waiters). Not
        wait_for or asyncio.timeout: on Python 3.11 either can swallow a cancel that comes as its
        timeout fires, and a worker would then knock for ever (a stop that never ends)."""
        loop = asyncio.get_running_loop()
        napper = loop.create_future()
        self._nappers.add(napper)
        timer = loop.call_later(wait_s, _wake, napper)
        try:
            await napper
        finally:
            timer.cancel()
            self._nappers.discard(napper)

    async def _try_start(self) -> tuple[str, Any]:
        keys = [
            self.keys.slots,
            self.keys.instances,
            self.keys.orphans,
            self.keys.line,
            self.keys.pace,
            self.keys.retrying,
            self.keys.releases,
            self.keys.aging,
            self.keys.epoch,
            self.keys.rebuilding,
        ]
        known = self.epoch
        args = [
            self.instance_id,
            self.max_concurrent,
            self.interval_ms,
            self.keys.prefix,
            self.release_per_minute,
            known,
        ]
        # Shielded: a worker cancelled mid-call must not lose a flight the script already popped.
        call = asyncio.ensure_future(self._call(self._start, keys, args))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(self._give_back)
            raise
        kind, value = _start_reply(reply)
        return (kind, known) if kind == "forgotten" else (kind, value)

    def _give_back(self, call: asyncio.Future[Any]) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        kind, flight = _start_reply(call.result())
        if kind == "go":
            self._spawn(self.requeue_front(flight))

    async def start(self, flight: Flight) -> float:
        return 0.0  # next() granted the slot and the pacing turn in the same script

    async def finish(self, flight: Flight) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.slots, flight.id)
            pipe.delete(self.keys.request(flight.id))
            pipe.publish(self.keys.wake, "finish")
            await call(pipe.execute())

    async def view(self) -> LineView:
        keys = [
            self.keys.slots,
            self.keys.instances,
            self.keys.orphans,
            self.keys.line,
            self.keys.pace,
            self.keys.held,
            self.keys.releases,
            self.keys.aging,
        ]
        now, order, running, pace, held, infos = await self._call(
            self._view, keys, [self.keys.prefix, self.release_per_minute]
        )
        now = int(now)
        self._last_view = LineView(
            {text(flight_id): n for n, flight_id in enumerate(order, start=1)},
            running_s=tuple(max(0.0, (now - int(started)) / 1000) for started in running),
            next_start_s=max(0.0, (int(pace) - now) / 1000),
            held_s=max(0.0, (int(held) - now) / 1000),
            max_concurrent=self.max_concurrent,
            instances=tuple(_instance(json.loads(text(raw))) for raw in infos),
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
        self.max_size, self.max_concurrent, self.max_starvation_s = max_size, max_concurrent, max_starvation_s
        self.interval_ms, self.release_per_minute = round(interval_s * 1000), release_per_minute

    def peek(self) -> LineView:
        return self._last_view

    # -- Pacer ---------------------------------------------------------------------

    async def hold(self, delay_s: float) -> None:
        if math.isnan(delay_s) or delay_s <= 0:
            return
        delay_ms = round(min(delay_s, self.max_hold_s) * 1000)
        await self._call(self._hold, [self.keys.pace, self.keys.held], [delay_ms])

    async def retry_turn(self) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        token = secrets.token_hex(8)
        try:
            while (
                wait_ms := int(
                    await self._call(self._retry, [self.keys.pace, self.keys.retrying], [token, self.interval_ms])
                )
            ) > 0:
                await asyncio.sleep(wait_ms / 1000)
        finally:
            await asyncio.shield(logged(self._redis.zrem(self.keys.retrying, token), "a retry's turn not given back"))
        return loop.time() - began

    # -- dead instances --------------------------------------------------------------

    async def dead_flights(self) -> list[Flight]:
        """The running flights of instances whose lease ran out, each handed to exactly one caller."""
        reply = await self._call(
            self._orphans, [self.keys.slots, self.keys.instances, self.keys.orphans, self.keys.line], [self.keys.prefix]
        )
        flights = []
        for i in range(0, len(reply), 2):
            raw = json.loads(text(reply[i + 1]))
            fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else {}
            flights.append(_flight(text(reply[i]), fields))
        return flights

    async def requeue_front(self, flight: Flight) -> None:
        """Put a flight back in line at its old number: ahead of everyone admitted after it."""
        seq = await self._redis.hget(self.keys.request(flight.id), "seq")
        if seq is None:  # its request is gone (the call ended meanwhile)
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.line, {flight.id: int(seq)})
            pipe.hdel(self.keys.slots, flight.id)
            pipe.publish(self.keys.wake, "requeue")
            await pipe.execute()

    # -- a line Redis forgot -----------------------------------------------------------

    async def rebuild(self, running: list[Flight], waiting: list[Flight]) -> int:
        """Give back this instance's share of a forgotten line (line_rebuild.lua): ``running``, the flights it
        runs; ``waiting``, its guests' flights not started, each at its old number. Flights whose
        number this instance never knew are admitted again afterwards, behind. Returns the highest
        number given back."""
        loop = asyncio.get_running_loop()
        now_mono, now = loop.time(), time.time()
        runs = [[f.id, round((now_mono - f.started_mono) * 1000) if f.started_mono is not None else 0] for f in running]
        numbered = [f for f in waiting if f.number > 0]
        waits = []
        for flight in numbered:
            score, aging_ms = flight.number, 0
            if flight.rank > 0:
                waited_ms = (now - min((t.created_at for t in flight.tickets), default=now)) * 1000
                aging_ms = max(0, round(self.max_starvation_s * 1000 - waited_ms))
                if aging_ms > 0:
                    score = flight.rank * TIER_SPAN + flight.number
            request = flight.request
            fields = [
                "key",
                flight.key or "",
                "request_id",
                request.request_id,
                "query",
                request.query,
                "parameters",
                json.dumps(dict(request.parameters)),
                "session_id",
                request.session_id or "",
            ]
            waits.append([flight.id, score, flight.number, aging_ms, fields])
        ago_ms = -1 if self.last_start_mono is None else round((now_mono - self.last_start_mono) * 1000)
        top = await self._call(
            self._rebuild,
            [self.keys.slots, self.keys.line, self.keys.seq, self.keys.pace, self.keys.aging],
            [
                self.instance_id,
                self.keys.prefix,
                self.interval_ms,
                ago_ms,
                REQUEST_TTL_S,
                json.dumps(runs),
                json.dumps(waits),
            ],
        )
        unnumbered = [f for f in waiting if f.number == 0]
        if unnumbered:  # after the window (admit waits for it), not in the heartbeat that rebuilds
            self._spawn(self._admit_all(unnumbered))
        return int(top)

    async def forgetting(self) -> bool:
        """Whether Redis forgot the line and the instances are still giving it back (a guest's
        record may be missing for that moment)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.epoch)
            pipe.exists(self.keys.rebuilding)
            epoch, rebuilding = await call(pipe.execute())
        return epoch is None or text(epoch) != self.epoch or bool(rebuilding)

    async def _admit_all(self, flights: list[Flight]) -> None:
        for flight in flights:
            try:
                await self.admit(flight)
            except (LineFull, LineUnavailable) as exc:
                logger.warning("flight %s could not rejoin the line: %s", flight.id, exc)

    # -- plumbing --------------------------------------------------------------------

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await call(script(keys=keys, args=args))


def _wake(napper: asyncio.Future[None]) -> None:
    if not napper.done():
        napper.set_result(None)


def _start_reply(reply: list[Any]) -> tuple[str, Any]:
    kind = text(reply[0])
    if kind != "go":
        return kind, text(reply[1]) if len(reply) > 1 else None
    raw = [text(x) for x in reply[2:]]
    return kind, _flight(text(reply[1]), dict(zip(raw[::2], raw[1::2], strict=True)))


def _flight(flight_id: str, fields: dict[str, str]) -> Flight:
    request = WorkflowRequest(
        fields.get("request_id", flight_id),
        fields.get("query", ""),
        json.loads(fields.get("parameters") or "{}"),
        fields.get("session_id") or None,
    )
    return Flight(fields.get("key") or None, [], request, id=flight_id)


def _instance(entry: dict[str, Any]) -> dict[str, object]:
    raw = entry.get("info") or []
    info: dict[str, object] = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else {}
    for name in ("pid",):
        if isinstance(info.get(name), str) and str(info[name]).isdigit():
            info[name] = int(str(info[name]))
    if isinstance(info.get("started_at"), str):
        info["started_at"] = float(str(info["started_at"]))
    return {"id": entry["id"], **info}
