"""Flight events across instances, followed: this instance's guests hear flights run anywhere.

With a shared line, any instance may run any flight, while the flight's guests are connected to
the instance that admitted them. Every instance listens on the channel the runner announces each
event on (relay.py) and applies the events of the flights whose guests it holds to its own
service, in stream order, exactly as its own workers would (service.py's sink methods); a flight
run by this instance for its own guests is applied at once, without waiting for Redis (the relay
hands each event over as it publishes it).

A guest who leaves the last seat of a flight running elsewhere sends a cancel on a second channel
(places.py's ``abandon``); the runner stops the call (as when a local guest leaves). A request
claimed by another instance is let go of here (a third channel).

Each event carries its number in the flight (``n``, relay.py), so a follower applies each once,
whatever reaches the stream twice; a follower that meets a gap reads the whole stream and applies
what follows on, in number order.

Invariants: events of one flight are applied in number order, each once (the follower remembers
the last stream id read per flight); a message lost on the channel is caught up at the next
position tick (a local flight missing from the line's view has started somewhere: its stream is
read).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from ...flights import Flights
from ...positions import Positions
from ...stopping import stop_tasks
from ...tickets import Flight
from ...workers import FlightSink
from .boundary import Spawned, logged, subscribe, text
from .keys import Keys
from .running import RunningFlights


class FlightFollower:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        instance_id: str,
        sink: FlightSink,
        flights: Flights,
        positions: Positions,
        running: RunningFlights,
        release: Callable[[str], None],
    ) -> None:
        """``sink``: where this instance's guests' flights hear their events (endings.py);
        ``running``: the flights this instance runs (a cancel stops one);
        ``release``: let go of a request another instance claimed (attendance.py)."""
        self._redis = redis
        self._keys = keys
        self._instance_id = instance_id
        self._sink = sink
        self._flights = flights
        self._positions = positions
        self._running = running
        self._release = release
        self._applied: dict[str, str] = {}  # flight id -> last stream id applied here
        self._direct: set[str] = set()  # flights run here for guests held here: applied directly
        self._listener: asyncio.Task[None] | None = None
        self._spawn = Spawned("relay: work nobody waits for was not done")

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="guestqueue-relay")

    async def stop(self) -> None:
        await stop_tasks([self._listener])
        await self._spawn.stop()

    def apply_directly(self, ran: Flight, event: dict[str, Any]) -> None:
        """An event of a flight this instance runs (``ran``, the runner's copy), as the relay
        publishes it: our own guests hear it now (not via Redis)."""
        local = self._local(ran.id)
        if local is not None and local is not ran:
            self._direct.add(ran.id)
            if _fit(local, event) == "gap":
                # Our guest's flight joined after the call began (its admission still finishing when
                # this instance started it): what it missed comes from our copy first.
                if not local.started and not local.finished:
                    self._sink.on_started(local)
                for text in ran.answer_parts[len(local.answer_parts) : event["n"] - 1]:
                    self._sink.emit_chunk(local, text)
            if _fit(local, event) == "next":
                self._apply(local, event)
        if event["t"] not in ("started", "chunk"):
            self._direct.discard(ran.id)

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

    def _local(self, flight_id: str) -> Flight | None:
        return self._flights.get(flight_id)

    async def _listen(self) -> None:
        channels = [self._keys.events_channel, self._keys.cancel_channel, self._keys.moved_channel]
        await subscribe(self._redis, channels, self._heard, "relay lost Redis")

    async def _heard(self, message: dict[str, Any]) -> None:
        channel, flight_id = text(message["channel"]), text(message["data"])
        if channel == self._keys.moved_channel:
            request_id, old_holder, new_holder = json.loads(flight_id)
            # A second claim by the holder itself (two resumes of one request at once) moves nothing.
            if old_holder == self._instance_id != new_holder:
                self._release(request_id)
        elif channel == self._keys.cancel_channel:
            self._running.stop(flight_id)
        elif self._local(flight_id) is not None:
            await self._catch_up(flight_id)

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
