"""Flight events across instances: the worker's sink when the line is shared (Redis).

With a shared line, any instance may run any flight, while the flight's guests
are connected to the instance that admitted them. The runner's worker pool
reports to a :class:`FlightRelay` (a :class:`~guestqueue.workers.FlightSink`):
each event (``started``, ``chunk``, ``completed``, ``timeout``, ``error``,
``admitted``) is
appended to the flight's Redis stream and announced on one channel. Every
instance listens on that channel and applies the events of the flights whose
guests it holds to its own service, in stream order, exactly as its own
workers would (service.py's sink methods); a flight run by this instance for
its own guests is applied at once, without waiting for Redis.

A guest who leaves the last seat of a flight running elsewhere sends a cancel
on a second channel (places.py's ``abandon``); the runner stops the call (as
when a local guest leaves).

Each event carries its number in the flight (``n``: ``started`` 0, chunk k is
k, the ending follows the last chunk), so a follower applies each once,
whatever reaches the stream twice (a command redis-py sent again after a
dropped connection, a replay). When Redis forgets the line (lines/redis/line.py's
epoch), the runner writes the whole story of its running and recently ended
flights into their streams again; a follower that meets a gap reads the whole
stream and applies what follows on, in number order.

Invariants: events of one flight are applied in number order, each once (the
relay remembers the last stream id read per flight); a message lost on the
channel is caught up at the next position tick (a local flight missing from the
line's view has started somewhere: its stream is read).
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
from ...flights import Flights
from ...positions import Positions
from ...scripts import load_script
from ...stopping import raise_if_cancelled, stop_tasks
from ...tickets import Flight
from ...workers import FlightSink
from .boundary import Spawned, call, logged, subscribe, text, unavailable
from .line import RedisLine
from .places import RedisPlaces

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
        sink: FlightSink,
        flights: Flights,
        positions: Positions,
        release: Callable[[str], None],
        reconnect_grace_s: Callable[[], float],
    ) -> None:
        """``sink``: where this instance's guests' flights hear their events (endings.py);
        ``release``: let go of a request another instance claimed (attendance.py);
        ``reconnect_grace_s``: the line's, as now (places nobody took over by then are reaped)."""
        self._redis = redis
        self._line = line
        self._places = places
        self._sink = sink
        self._flights = flights
        self._positions = positions
        self._release = release
        self._reconnect_grace_s = reconnect_grace_s
        keys = self._keys = line.keys
        self._instance_id = places.instance_id
        self._events_channel = keys.events_channel
        self._cancel_channel = keys.cancel_channel
        self._applied: dict[str, str] = {}  # flight id -> last stream id applied here
        self._direct: set[str] = set()  # flights run here for guests held here: applied directly
        self._running: dict[str, Flight] = {}  # the runner's copies of the flights this instance runs
        # Flights this instance ran that ended lately, with their ending: (ended at, flight, event).
        self._ended: OrderedDict[str, tuple[float, Flight, dict[str, Any]]] = OrderedDict()
        self._relay_event = redis.register_script(load_script("relay_event"))
        self._listener: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._spawn = Spawned("relay: work nobody waits for was not done")
        self._sending: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="guestqueue-relay")
        self._sender = asyncio.create_task(self._send(), name="guestqueue-relay-send")
        self._janitor = asyncio.create_task(self._clean_up_after_the_dead(), name="guestqueue-relay-janitor")

    async def stop(self) -> None:
        try:  # every event this instance produced reaches Redis (unless Redis is gone)
            await asyncio.wait_for(self._sending.join(), FLUSH_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%d flight events not relayed: Redis did not take them", self._sending.qsize())
        await stop_tasks([self._listener, self._sender, self._janitor])
        await self._spawn.stop()

    # -- FlightSink: this instance runs the flight --------------------------------

    def on_started(self, flight: Flight) -> None:
        self._running[flight.id] = flight
        self._publish(flight, {"t": "started", "n": 0})

    def emit_chunk(self, flight: Flight, text: str) -> None:
        flight.answer_parts.append(text)  # the worker checks the answer is not empty
        self._publish(flight, {"t": "chunk", "text": text, "n": len(flight.answer_parts)})

    def end_flight_completed(self, flight: Flight) -> None:
        self._end(flight, {"t": "completed", "suggested": flight.suggested_questions})

    def end_flight_timeout(self, flight: Flight) -> None:
        self._end(flight, {"t": "timeout"})

    def end_flight_admitted(self, flight: Flight, grant: dict[str, Any]) -> None:
        self._end(flight, {"t": "admitted", "grant": grant})

    def end_flight_error(self, flight: Flight, code: str, message: str, *, detail: str | None = None) -> None:
        if code == "shutdown" and not flight.answer_parts and not flight.finished:
            # This instance stops before the call said anything: another instance runs it, from
            # the front of the line (the worker puts it back instead of finishing it).
            flight.finished = flight.back_in_line = True
            self._running.pop(flight.id, None)
            return
        if code == "shutdown":
            code, message = "interrupted", INTERRUPTED
        self._end(flight, {"t": "error", "code": code, "message": message, "detail": detail})

    # -- instances that died: their running calls and their guests' places ------------

    async def _clean_up_after_the_dead(self) -> None:
        """Every few seconds (any live instance may do it; each orphan goes to exactly one): a call a
        dead instance was running is retried from the front if it had sent no chunk, else ends
        ``interrupted``; places nobody took over within the grace are released (places.py)."""
        while True:
            await asyncio.sleep(self._line.instance_ttl_s / 2)
            try:
                with unavailable():
                    for flight in await self._line.dead_flights():
                        await self._recover(flight)
                    await self._places.reap(self._reconnect_grace_s())
            except LineUnavailable as exc:
                raise_if_cancelled()
                logger.warning("could not clean up after dead instances: %s", exc.__cause__ or exc)

    async def _recover(self, flight: Flight) -> None:
        entries: list[Any] = await self._redis.xrange(self._keys.flight_events(flight.id)) or []
        kinds = [json.loads(fields[b"e"])["t"] for _, fields in entries]
        if any(kind in ("completed", "timeout", "error", "admitted") for kind in kinds):
            return  # it had ended; only its slot was left
        if "chunk" not in kinds:
            logger.info("flight %s: its instance died before any chunk; back to the front", flight.id)
            await self._line.requeue_front(flight)
            return
        logger.info("flight %s: its instance died mid-answer; it ends interrupted", flight.id)
        ending = {"t": "error", "code": "interrupted", "message": INTERRUPTED, "n": kinds.count("chunk") + 1}
        self._sending.put_nowait((flight.id, ending))

    def _end(self, flight: Flight, event: dict[str, Any]) -> None:
        if flight.finished:
            return
        flight.finished = True
        event["n"] = len(flight.answer_parts) + 1
        self._running.pop(flight.id, None)
        now = asyncio.get_running_loop().time()
        self._ended[flight.id] = (now, flight, event)
        while self._ended and next(iter(self._ended.values()))[0] < now - ENDED_KEPT_S:
            self._ended.popitem(last=False)
        self._publish(flight, event)

    def _publish(self, flight: Flight, event: dict[str, Any]) -> None:
        local = self._local(flight.id)
        if local is not None and local is not flight:  # our own guests hear it now (not via Redis)
            self._direct.add(flight.id)
            if _fit(local, event) == "gap":
                # Our guest's flight joined after the call began (its admission still finishing when
                # this instance started it): what it missed comes from our copy first.
                if not local.started and not local.finished:
                    self._sink.on_started(local)
                for text in flight.answer_parts[len(local.answer_parts) : event["n"] - 1]:
                    self._sink.emit_chunk(local, text)
            if _fit(local, event) == "next":
                self._apply(local, event)
        if event["t"] not in ("started", "chunk"):
            self._direct.discard(flight.id)
        self._sending.put_nowait((flight.id, event))

    async def _send(self) -> None:
        """Append events to their flight's stream in the order they happened (one sender)."""
        while True:
            flight_id, event = await self._sending.get()
            try:
                await self._deliver(flight_id, event)
            finally:
                self._sending.task_done()

    async def _deliver(self, flight_id: str, event: dict[str, Any]) -> None:
        """Until Redis has it: an event dropped would leave other instances' guests without their
        answer. Sent twice (a retry after a lost reply) is harmless: followers go by numbers."""
        pause_s = RETRY_FIRST_S
        while True:
            try:
                known = self._line.epoch
                if await self._append(flight_id, event, known):
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

    async def _append(self, flight_id: str, event: dict[str, Any], epoch: str) -> bool:
        return bool(
            await call(
                self._relay_event(
                    keys=[self._keys.flight_events(flight_id), self._keys.epoch],
                    args=[epoch, json.dumps(event), STREAM_TTL_S, self._events_channel, flight_id],
                )
            )
        )

    async def give_back(self) -> None:
        """Redis forgot the line: the flights this instance runs hold their slots again, and the
        story of each (and of those that ended lately) is written to its stream again, so every
        follower hears all of it, each event once (numbers)."""
        running = list(self._running.values())
        await self._line.rebuild(running, [])
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
                pipe.publish(self._events_channel, flight.id)
            await pipe.execute()

    # -- following: this instance holds the flight's guests ------------------------

    def _local(self, flight_id: str) -> Flight | None:
        return self._flights.get(flight_id)

    async def _listen(self) -> None:
        channels = [self._events_channel, self._cancel_channel, self._keys.moved_channel]
        await subscribe(self._redis, channels, self._heard, "relay lost Redis")

    async def _heard(self, message: dict[str, Any]) -> None:
        channel, flight_id = text(message["channel"]), text(message["data"])
        if channel == self._keys.moved_channel:
            request_id, old_holder, new_holder = json.loads(flight_id)
            # A second claim by the holder itself (two resumes of one request at once) moves nothing.
            if old_holder == self._instance_id != new_holder:
                self._release(request_id)
        elif channel == self._cancel_channel:
            self._stop_running(flight_id)
        elif self._local(flight_id) is not None:
            await self._catch_up(flight_id)

    def _stop_running(self, flight_id: str) -> None:
        flight = self._running.get(flight_id)
        if flight is not None and flight.job is not None and not flight.job.done():
            flight.finished = True  # nobody is left to tell
            flight.job.cancel()

    async def _catch_up(self, flight_id: str) -> None:
        """Apply the flight's events this instance has not applied yet, in number order."""
        if flight_id in self._direct:
            return
        after = self._applied.get(flight_id, "0")
        stream = self._keys.flight_events(flight_id)
        entries: list[Any] = await self._redis.xrange(stream, min=f"({after}" if after != "0" else "-") or []
        for entry_id, fields in entries:
            local = self._local(flight_id)
            if local is None:
                break
            # Two catch-ups of one flight may overlap: the one that reads an entry second skips it.
            if _entry(text(entry_id)) <= _entry(self._applied.get(flight_id, "0")):
                continue
            self._applied[flight_id] = text(entry_id)
            event = json.loads(fields[b"e"])
            fit = _fit(local, event)
            if fit == "next":
                self._apply(local, event)
            elif fit == "gap":  # events were lost or come out of order (a replay): read the whole story
                await self._catch_up_in_order(flight_id)

    async def _catch_up_in_order(self, flight_id: str) -> None:
        entries: list[Any] = await self._redis.xrange(self._keys.flight_events(flight_id)) or []
        events = sorted((json.loads(fields[b"e"]) for _, fields in entries), key=lambda e: e.get("n", 0))
        for event in events:
            local = self._local(flight_id)
            if local is None:
                return
            fit = _fit(local, event)
            if fit == "gap":
                return  # the rest comes later (its runner writes it)
            if fit == "next":
                self._apply(local, event)

    async def follow(self, flight: Flight) -> None:
        """A flight this instance now holds a guest of (taken over): apply what it did so far."""
        self._applied.pop(flight.id, None)
        await logged(self._catch_up(flight.id), f"flight {flight.id}: could not catch up")

    def catch_up_started(self) -> None:
        """After each view: local flights no longer in line started somewhere; read their streams."""
        view, flights = self._positions.view, self._flights
        started = [f for f in flights.waiting if view.position(f) == 0]
        # Running elsewhere, a missed message would leave its guests hanging: read on from the stream.
        for flight_id in [*started, *(f for f in flights.running if f not in self._direct)]:
            self._spawn(self._catch_up(flight_id))  # (Spawned logs it if Redis fails)

    def _apply(self, flight: Flight, event: dict[str, Any]) -> None:
        sink, kind = self._sink, event["t"]
        if flight.finished:
            return
        if kind == "started":
            if not flight.started:
                sink.on_started(flight)
        elif kind == "chunk":
            if not flight.started:
                sink.on_started(flight)
            sink.emit_chunk(flight, event["text"])
        else:
            self._applied.pop(flight.id, None)
            if kind == "completed":
                flight.suggested_questions = list(event.get("suggested") or [])
                sink.end_flight_completed(flight)
            elif kind == "timeout":
                sink.end_flight_timeout(flight)
            elif kind == "admitted":
                sink.end_flight_admitted(flight, event["grant"])
            else:
                sink.end_flight_error(flight, event["code"], event["message"], detail=event.get("detail"))


def _fit(flight: Flight, event: dict[str, Any]) -> str:
    """Where ``event`` stands for this instance's copy of ``flight``: the ``next`` one to apply, one
    ``seen`` already, or one after a ``gap``. Events without a number (an older instance) are next."""
    n = event.get("n")
    if n is None:
        return "next"
    if event["t"] == "started":
        return "seen" if flight.started or flight.finished else "next"
    have = len(flight.answer_parts)
    if event["t"] == "chunk" and n <= have:
        return "seen"
    return "next" if n <= have + 1 else "gap"


def _entry(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("milliseconds-sequence") as something that orders correctly."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
