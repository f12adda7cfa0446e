"""The one atomic start of a shared line, and the workers' wait for it.

"The flight at the global front starts now, on this instance" is one script (scripts/line_start.lua):
it happens only if a global slot is free, no retry is waiting for its turn and pacing allows, all
timed on Redis ``TIME``. The script pops the front, records the slot as ``instance started_ms`` and
moves the pacing mark; there is no window between choosing the front and taking the slot in which
another instance could slip in. Local workers knock one at a time; between knocks they nap until a
wake-up (wake.py) or the pacing wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ...errors import LineUnavailable
from ...scripts import load_script
from ...stopping import raise_if_cancelled
from ...tickets import Flight
from .boundary import Spawned, call, text
from .fair import FairCharges
from .instances import DeadInstances, Lease
from .keys import Keys, start_keys
from .records import flight_from
from .running import RunningFlights
from .wake import MAX_WAKE_WAIT_S, Wake


@dataclass
class Limits:
    """A shared line's limits as this instance applies them (changed at once by reconfigure)."""

    max_size: int
    max_concurrent: int
    interval_ms: int
    release_per_minute: int = 0
    max_starvation_s: float = 120.0

    def for_admission(self, rank: int) -> list[int]:
        """scripts/line_admit.lua's ARGV[2..6]: max_size max_concurrent interval_ms rank starvation_ms."""
        return [self.max_size, self.max_concurrent, self.interval_ms, rank, round(self.max_starvation_s * 1000)]


class Starts:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        instance_id: str,
        limits: Limits,
        *,
        lease: Lease,
        wake: Wake,
        dead: DeadInstances,
        spawn: Spawned,
        running: RunningFlights,
        fair: FairCharges,
        starts_allowed: Callable[[], bool],
    ) -> None:
        """``starts_allowed``: the line's mode (gate.py), asked before every knock; ``running``: a
        granted flight is this instance's from its grant, not from the worker's start a loop turn
        later (a rebuild in between would leave its slot out, and its guests' instance would give
        it back as waiting: asked twice)."""
        self._keys = keys
        self._instance_id = instance_id
        self._limits = limits
        self._lease = lease
        self._wake = wake
        self._dead = dead
        self._spawn = spawn
        self._running = running
        self._fair = fair
        self._starts_allowed = starts_allowed
        self._script = redis.register_script(load_script("line_start"))
        self._knock = asyncio.Lock()  # one local worker at a time asks Redis for a start
        self.last_mono: float | None = None  # this instance's last start (to pace a rebuilt line)

    async def next(self) -> Flight:
        """The next flight this instance runs: its slot and pacing turn are taken."""
        while True:
            if not self._starts_allowed():  # paused: ask for no start (the script would take the slot)
                await asyncio.sleep(MAX_WAKE_WAIT_S)
                continue
            async with self._knock:
                self._wake.woken.clear()
                try:
                    kind, value = await self._try()
                except LineUnavailable:
                    raise_if_cancelled()
                    await asyncio.sleep(MAX_WAKE_WAIT_S)
                    continue
                if isinstance(value, Flight):
                    self._running.add(value)
                    self.last_mono = asyncio.get_running_loop().time()
                    return value
                if kind == "forgotten":
                    await self._lease.notice(value)
                    continue
                wait_s = MAX_WAKE_WAIT_S
                if kind == "pace":
                    wait_s = min(wait_s, int(value) / 1000)
                if not self._wake.woken.is_set():  # a wake-up during the call: knock again at once
                    await self._wake.nap(wait_s)

    async def _try(self) -> tuple[str, Any]:
        keys, limits = self._keys, self._limits
        known = self._lease.epoch
        expected = self._fair.expected
        script = self._script(
            keys=start_keys(keys),
            args=[
                self._instance_id,
                limits.max_concurrent,
                limits.interval_ms,
                keys.prefix,
                limits.release_per_minute,
                known,
                expected,
            ],
        )
        # Shielded: a worker cancelled mid-call must not lose a flight the script already popped.
        started = asyncio.ensure_future(call(script))
        try:
            reply = await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(self._give_back)
            raise
        kind, value = _reply(reply)
        if isinstance(value, Flight) and value.share is not None:
            value.charged = expected  # what the script charged its share
        return (kind, known) if kind == "forgotten" else (kind, value)

    def _give_back(self, started: asyncio.Future[Any]) -> None:
        if started.cancelled() or started.exception() is not None:
            return
        kind, flight = _reply(started.result())
        if kind == "go":
            self._spawn(self._dead.requeue_front(flight, self._instance_id))


def _reply(reply: list[Any]) -> tuple[str, Any]:
    kind = text(reply[0])
    if kind != "go":
        return kind, text(reply[1]) if len(reply) > 1 else None
    raw = [text(x) for x in reply[2:]]
    return kind, flight_from(text(reply[1]), dict(zip(raw[::2], raw[1::2], strict=True)))
