"""The instances of a shared line: this one's lease (its heartbeat, and what it hears back), and
the running flights of those whose lease ran out.

Each instance renews its lease (a sorted set of expiry times, scripts/line_heartbeat.lua) every
``instance_ttl_s / 3``; a slot whose instance's lease ran out does not count (line_start.lua moves
it to the orphans). The same beat reads the line's *epoch*, a random id written when the line was
first made: if Redis no longer has it (restarted empty, flushed), the line was forgotten and every
instance gives back its share (``on_forgotten``); if Redis had forgotten only this instance (its
lease ran out while it was cut off), it rejoins (``on_rejoined``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from ...errors import LineUnavailable
from ...scripts import load_script
from ...stopping import raise_if_cancelled, stop_tasks
from ...tickets import Flight
from .boundary import call, logged, text
from .keys import Keys

logger = logging.getLogger("guestqueue.lines.redis.instances")


class Lease:
    def __init__(self, redis: aioredis.Redis, keys: Keys, instance_id: str, ttl_s: float) -> None:
        self._keys = keys
        self.instance_id = instance_id
        self.ttl_s = ttl_s
        self._beat = redis.register_script(load_script("line_heartbeat"))
        self._info: dict[str, str] = {}
        self._registered = False
        self._noticing = asyncio.Lock()  # one rebuild at a time, whoever noticed first
        self._beating: asyncio.Task[Any] | None = None  # the task holding it
        self._task: asyncio.Task[None] | None = None
        self.epoch = ""  # the line's epoch as this instance knows it ("" before registering)
        # When Redis last answered a heartbeat as the same line (loop clock): what was written before
        # it (less a margin) had been read by the other instances when Redis forgot.
        self.good_until = 0.0
        # Called when Redis had forgotten this instance (its lease ran out while it was cut off):
        # e.g. put its guests' flights back in line.
        self.on_rejoined: list[Callable[[], Awaitable[None]]] = []
        # Called when Redis forgot the whole line (restarted empty, flushed): give back this
        # instance's share (flights, records, events, sessions) within the rebuild window.
        self.on_forgotten: list[Callable[[], Awaitable[None]]] = []

    async def register(self, info: dict[str, Any]) -> None:
        """Join the line's instances, and keep beating."""
        self._info = {k: str(v) for k, v in info.items()}
        await self.beat()
        self._task = asyncio.create_task(self._heartbeat(), name="guestqueue-redis-heartbeat")

    async def beat(self) -> None:
        async with self._noticing:
            self._beating = asyncio.current_task()
            try:
                await self._beat_now()
            finally:
                self._beating = None

    async def _beat_now(self) -> None:
        pairs = [x for kv in self._info.items() for x in kv]
        ttl_ms = round(self.ttl_s * 1000)
        reply = self._beat(keys=self._beat_keys(), args=[self.instance_id, ttl_ms, self.epoch, _token(), *pairs])
        fresh, epoch, forgot = await call(reply)
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
                self.ttl_s,
            )
            for rejoin in self.on_rejoined:
                await rejoin()
        elif fresh:
            logger.info("instance %s registered on the shared line", self.instance_id)
        self._registered = True
        self.good_until = now

    async def notice(self, known: str) -> None:
        """A script found Redis's epoch is not ``known``: beat now (which rebuilds, once), or wait
        for the rebuild a beat under way began."""
        if self.epoch == known:  # nobody has handled it yet
            await self.beat()
        else:
            await self.settled()

    async def settled(self) -> None:
        """Once no rebuild is under way. A beat learns the new epoch before it gives back this
        instance's share: a script run with that epoch meanwhile would find the share missing (a
        waiting room's session found no slot, and its guest was turned away)."""
        if self._beating is not None and self._beating is asyncio.current_task():
            return  # called from the rebuild itself
        async with self._noticing:
            pass

    async def end(self) -> None:
        """Stop beating. The lease ends now rather than vanishing: guests this instance handed off
        keep their places for the reconnect grace, then other instances release them (places.py)."""
        await stop_tasks([self._task])
        await logged(
            self._beat(keys=self._beat_keys(), args=[self.instance_id, 0, self.epoch, _token()]),
            "could not end this instance's lease",
        )

    def halt(self) -> None:
        """Stop beating at once, the lease left to run out (what a killed process leaves)."""
        if self._task is not None:
            self._task.cancel()

    def _beat_keys(self) -> list[str]:
        keys = self._keys
        return [keys.instances, keys.instance_info(self.instance_id), keys.epoch, keys.rebuilding, keys.beat]

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.beat()  # a Redis restarted empty finds us again here
            except LineUnavailable as exc:
                raise_if_cancelled()
                logger.warning("heartbeat failed: %s", exc)


def _token() -> str:
    return secrets.token_hex(8)


class DeadInstances:
    """The running flights of instances whose lease ran out: one that had said nothing goes back to
    the front (scripts/live_active.lua), any other ends ``interrupted`` in the script that takes it
    (scripts/line_take_orphans.lua), so it ends exactly once even if its taker dies too."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._orphans = redis.register_script(load_script("line_take_orphans"))
        self._requeue = redis.register_script(load_script("line_requeue"))

    async def end_calls(self, ending: dict[str, Any], stream_ttl_s: int) -> list[str]:
        keys = self._keys
        reply = await call(
            self._orphans(
                keys=[keys.slots, keys.instances, keys.orphans, keys.line],
                args=[keys.prefix, json.dumps(ending), stream_ttl_s, keys.events_channel],
            )
        )
        return [text(flight_id) for flight_id in reply]

    async def requeue_front(self, flight: Flight, instance_id: str) -> None:
        """Put a flight ``instance_id`` started back in line at its old number, ahead of everyone
        admitted after it, if its slot is still that instance's (scripts/line_requeue.lua)."""
        keys = self._keys
        script_keys = [keys.slots, keys.line, keys.request(flight.id)]
        await call(self._requeue(keys=script_keys, args=[flight.id, instance_id, keys.wake]))


def instance_info(entry: dict[str, Any]) -> dict[str, object]:
    """An instance as a line's view lists it: its id, host, pid and start time."""
    raw = entry.get("info") or []
    info: dict[str, object] = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else {}
    for name in ("pid",):
        if isinstance(info.get(name), str) and str(info[name]).isdigit():
            info[name] = int(str(info[name]))
    if isinstance(info.get("started_at"), str):
        info["started_at"] = float(str(info["started_at"]))
    return {"id": entry["id"], **info}
