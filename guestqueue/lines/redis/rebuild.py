"""Giving back a line Redis forgot (restarted empty, flushed): each instance writes back its share
(scripts/line_rebuild.lua): the flights it runs hold their slots again, its guests' waiting
flights go back at their old numbers, and the pacing mark is where its last start left it.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from ...scripts import load_script
from ...tickets import Flight
from .boundary import call, text
from .keys import Keys, rebuild_keys
from .records import REQUEST_TTL_S, request_fields

TIER_SPAN = 10**12  # as in scripts/aging.lua: a score is rank * TIER_SPAN + the flight's number


class Rebuild:
    def __init__(self, redis: aioredis.Redis, keys: Keys, instance_id: str) -> None:
        self._redis = redis
        self._keys = keys
        self._instance_id = instance_id
        self._script = redis.register_script(load_script("line_rebuild"))

    async def give_back(
        self,
        running: list[Flight],
        waiting: list[Flight],
        ended: list[str],
        *,
        now_mono: float,
        interval_ms: int,
        last_start_ago_ms: int,
        max_starvation_s: float,
    ) -> int:
        """Write back ``running`` and those of ``waiting`` whose number is known, never one that a
        runner said ran (``running`` or ``ended``, ids of flights it ran that ended lately); the
        highest number."""
        keys = self._keys
        top = await call(
            self._script(
                keys=rebuild_keys(keys),
                args=[
                    self._instance_id,
                    keys.prefix,
                    interval_ms,
                    last_start_ago_ms,
                    REQUEST_TTL_S,
                    json.dumps(running_shares(running, now_mono)),
                    json.dumps(waiting_shares(waiting, max_starvation_s)),
                    json.dumps(ended),
                ],
            )
        )
        return int(top)

    async def under_way(self, epoch: str) -> bool:
        """Whether Redis forgot the line (its epoch is not ``epoch``) and the instances are still
        giving it back (a guest's record may be missing for that moment)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._keys.epoch)
            pipe.exists(self._keys.rebuilding)
            current, rebuilding = await call(pipe.execute())
        return current is None or text(current) != epoch or bool(rebuilding)


def running_shares(running: list[Flight], now_mono: float) -> list[list[object]]:
    """What a rebuild writes back of the flights this instance runs: each with how long it has run."""
    return [[f.id, round((now_mono - f.started_mono) * 1000) if f.started_mono is not None else 0] for f in running]


def waiting_shares(waiting: list[Flight], max_starvation_s: float) -> list[list[object]]:
    """What a rebuild writes back of this instance's guests' waiting flights whose number it knows:
    each at its old number, a lower tier's with the aging it has left (scripts/aging.lua)."""
    now = time.time()
    shares: list[list[object]] = []
    for flight in waiting:
        if flight.number <= 0:
            continue
        score, aging_ms = flight.number, 0
        if flight.rank > 0:
            waited_ms = (now - min((t.created_at for t in flight.tickets), default=now)) * 1000
            aging_ms = max(0, round(max_starvation_s * 1000 - waited_ms))
            if aging_ms > 0:
                score = flight.rank * TIER_SPAN + flight.number
        shares.append([flight.id, score, flight.number, aging_ms, request_fields(flight)])
    return shares
