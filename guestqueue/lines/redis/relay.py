"""Flight events across instances, sent: the worker's sink when the line is shared (Redis).

With a shared line, any instance may run any flight, while the flight's guests
are connected to the instance that admitted them. The runner's worker pool
reports to a :class:`FlightRelay` (a :class:`~guestqueue.workers.FlightSink`):
each event (``started``, ``chunk``, ``completed``, ``timeout``, ``error``,
``admitted``) is appended to the flight's Redis stream and announced on one
channel, in the order it happened (one sender). Every instance holding the
flight's guests follows it from there (follow.py); a flight run by this
instance for its own guests is handed to the follower at once, without waiting
for Redis.

Each event carries its number in the flight (``n``: ``started`` 0, chunk k is
k, the ending follows the last chunk), so a follower applies each once,
whatever reaches the stream twice (a command redis-py sent again after a
dropped connection, a replay). When Redis forgets the line (lines/redis/line.py's
epoch), the runner writes the whole story of its running and recently ended
flights into their streams again.

Invariant: an event this instance produced reaches Redis, in order, unless
Redis stays away past the shutdown flush (it is tried again until then). A
flight's slot is freed by the script that appends its ending: an instance that
dies before leaves a held slot, which the recovery of a dead instance's calls
ends, never a free slot with no ending, which nobody would recover.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ...errors import LineUnavailable
from ...scripts import load_script
from ...stopping import raise_if_cancelled, stop_tasks
from ...tickets import Flight
from .boundary import call, unavailable
from .follow import FlightFollower
from .line import RedisLine
from .places import RedisPlaces
from .running import RunningFlights

logger = logging.getLogger("guestqueue.lines.redis.relay")

STREAM_TTL_S = 3600  # a flight's events stay readable this long (resumes, late followers)
FLUSH_TIMEOUT_S = 5.0  # at shutdown, how long to wait for the last events to reach Redis
INTERRUPTED = "The answer was interrupted. Please ask again."
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 1.0  # an event waiting for Redis asks again this often
ENDED_KEPT_S = 120.0  # a flight's story stays here this long after its end, to write again if Redis forgets
READ_WITHIN_S = 10.0  # an ending in Redis this long before it forgot had been read by every follower


class FlightRelay:
    def __init__(
        self,
        redis: aioredis.Redis,
        line: RedisLine,
        places: RedisPlaces,
        follower: FlightFollower,
        running: RunningFlights,
        reconnect_grace_s: Callable[[], float],
    ) -> None:
        """``follower``: hears at once the events of flights whose guests this instance holds;
        ``running``: the flights this instance runs (the follower stops one on a cancel);
        ``reconnect_grace_s``: the line's, as now (places nobody took over by then are reaped)."""
        self._redis = redis
        self._line = line
        self._places = places
        self._follower = follower
        self._running = running
        self._reconnect_grace_s = reconnect_grace_s
        self._keys = line.keys
        # Flights this instance ran that ended lately, with their ending: (ended at, flight, event).
        self._ended: OrderedDict[str, tuple[float, Flight, dict[str, Any]]] = OrderedDict()
        self._relay_event = redis.register_script(load_script("relay_event"))
        self._janitor: asyncio.Task[None] | None = None
        # (flight id, event, whether its slot is freed with it): in the order they happened.
        self._sending: asyncio.Queue[tuple[str, dict[str, Any], bool]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send(), name="guestqueue-relay-send")
        self._janitor = asyncio.create_task(self._clean_up_after_the_dead(), name="guestqueue-relay-janitor")

    async def stop(self) -> None:
        try:  # every event this instance produced reaches Redis (unless Redis is gone)
            await asyncio.wait_for(self._sending.join(), FLUSH_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%d flight events not relayed: Redis did not take them", self._sending.qsize())
        await stop_tasks([self._sender, self._janitor])

    # -- FlightSink: this instance runs the flight --------------------------------

    def on_started(self, flight: Flight) -> None:
        self._running.add(flight)
        self._publish(flight, {"t": "started", "n": 0})

    def emit_chunk(self, flight: Flight, text: str) -> None:
        flight.answer_parts.append(text)  # the worker checks the answer is not empty
        self._publish(flight, {"t": "chunk", "text": text, "n": len(flight.answer_parts)})

    def end_flight_completed(self, flight: Flight) -> None:
        self._end(flight, {"t": "completed", "suggested": flight.suggested_questions})

    def end_flight_timeout(self, flight: Flight) -> None:
        self._end(flight, {"t": "timeout"})

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None:
        self._end(flight, {"t": "admitted", "grant": grant}, frees_slot=False)  # the session holds it now

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None:
        if code == "shutdown" and self.back_to_line(flight):
            return  # another instance runs it, from the front of the line
        if code == "shutdown":
            code, message = "interrupted", INTERRUPTED
        self._end(flight, {"t": "error", "code": code, "message": message, "detail": detail})

    def back_to_line(self, flight: Flight) -> bool:
        if flight.answer_parts or flight.finished:
            return False
        flight.finished = flight.back_in_line = True  # the worker puts it back instead of finishing it
        self._running.drop(flight.id)
        return True

    async def release(self, flight: Flight) -> None:
        if flight.id not in self._ended:  # stopped with nobody left to tell (running.py): no ending
            self._running.drop(flight.id)
            await self._line.finish(flight)
        # else the script that appends its ending frees its slot

    # -- instances that died: their running calls and their guests' places ------------

    async def _clean_up_after_the_dead(self) -> None:
        """Every few seconds (any live instance may do it): a call a dead instance was running goes
        back to the front if it had said nothing, else ends ``interrupted`` (line_take_orphans.lua);
        places nobody took over within the grace are released (places.py)."""
        ending = {"t": "error", "code": "interrupted", "message": INTERRUPTED, "detail": None}
        while True:
            await asyncio.sleep(self._line.instance_ttl_s / 2)
            try:
                with unavailable():
                    for flight_id in await self._line.end_dead_calls(ending, STREAM_TTL_S):
                        logger.info("flight %s: its instance died mid-answer; it ended interrupted", flight_id)
                    await self._places.reap(self._reconnect_grace_s())
            except LineUnavailable as exc:
                raise_if_cancelled()
                logger.warning("could not clean up after dead instances: %s", exc.__cause__ or exc)

    def _end(self, flight: Flight, event: dict[str, Any], *, frees_slot: bool = True) -> None:
        if flight.finished:
            return
        flight.finished = True
        event["n"] = len(flight.answer_parts) + 1
        self._running.drop(flight.id)
        now = asyncio.get_running_loop().time()
        self._ended[flight.id] = (now, flight, event)
        while self._ended and next(iter(self._ended.values()))[0] < now - ENDED_KEPT_S:
            self._ended.popitem(last=False)
        self._publish(flight, event, frees_slot=frees_slot)

    def _publish(self, flight: Flight, event: dict[str, Any], *, frees_slot: bool = False) -> None:
        self._follower.apply_directly(flight, event)  # our own guests hear it now (not via Redis)
        self._sending.put_nowait((flight.id, event, frees_slot))

    async def _send(self) -> None:
        """Append events to their flight's stream in the order they happened (one sender)."""
        while True:
            flight_id, event, frees_slot = await self._sending.get()
            try:
                await self._deliver(flight_id, event, frees_slot)
            finally:
                self._sending.task_done()

    async def _deliver(self, flight_id: str, event: dict[str, Any], frees_slot: bool) -> None:
        """Until Redis has it: an event dropped would leave other instances' guests without their
        answer. Sent twice (a retry after a lost reply) is harmless: followers go by numbers."""
        pause_s = RETRY_FIRST_S
        while True:
            try:
                known = self._line.epoch
                if await self._append(flight_id, event, known, frees_slot):
                    return
                # Redis forgot the line: it is rebuilt (our flights' stories written again by
                # give_back), then this event follows them.
                await self._line.notice(known)
            except LineUnavailable as exc:
                raise_if_cancelled()
                if pause_s == RETRY_FIRST_S:
                    logger.warning(
                        "flight %s: event %s waits for Redis: %s", flight_id, event.get("t"), exc.__cause__ or exc
                    )
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RETRY_MAX_S)

    async def _append(self, flight_id: str, event: dict[str, Any], epoch: str, frees_slot: bool) -> bool:
        keys = self._keys
        return bool(
            await call(
                self._relay_event(
                    keys=[keys.flight_events(flight_id), keys.epoch, keys.slots, keys.request(flight_id)],
                    args=[
                        epoch,
                        json.dumps(event),
                        STREAM_TTL_S,
                        keys.events_channel,
                        flight_id,
                        int(frees_slot),
                        keys.wake,
                    ],
                )
            )
        )

    async def give_back(self) -> None:
        """Redis forgot the line: the flights this instance runs hold their slots again, and the
        story of each (and of those that ended lately) is written to its stream again, so every
        follower hears all of it, each event once (numbers)."""
        running = self._running.all()
        # Every flight it ran that ended lately leaves the line too: its guests' instance may not
        # have heard it start before Redis forgot, and would give it back as waiting.
        await self._line.rebuild(running, [], ended=list(self._ended))
        stories: list[tuple[Flight, dict[str, Any] | None]] = [(flight, None) for flight in running]
        # Endings Redis had long before it forgot were read then: only the later ones again.
        since = self._line.good_until - READ_WITHIN_S
        stories += [(flight, ending) for ended_at, flight, ending in self._ended.values() if ended_at >= since]
        with unavailable():
            await self._write_again(stories)
        if stories:
            logger.warning("%d flights' events written again after Redis forgot them", len(stories))

    async def _write_again(self, stories: list[tuple[Flight, dict[str, Any] | None]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for flight, ending in stories:
                stream = self._keys.flight_events(flight.id)
                story = [{"t": "started", "n": 0}]
                story += [{"t": "chunk", "text": text, "n": n} for n, text in enumerate(flight.answer_parts, 1)]
                for event in [*story, *([ending] if ending is not None else [])]:
                    pipe.xadd(stream, {"e": json.dumps(event)})
                pipe.expire(stream, STREAM_TTL_S)
                pipe.publish(self._keys.events_channel, flight.id)
            await pipe.execute()
