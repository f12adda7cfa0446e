"""A fair line's charges on Redis (fairness.py; the tags are scripts/fair.lua's): each start charges
its share the expected service of a call (scripts/line_start.lua), and the end of the call the
difference (scripts/fair_charge.lua), moving the share's waiting flights by as much."""

from __future__ import annotations

import redis.asyncio as aioredis

from ...fairness import Shares
from ...scripts import load_script
from ...tickets import Flight
from .boundary import call
from .keys import Keys
from .wake import REORDERED


class FairCharges:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._keys = keys
        self.shares = Shares()  # the calls this instance ran (the expected service, the metrics)
        self._script = redis.register_script(load_script("fair_charge"))

    def __repr__(self) -> str:
        return f"FairCharges({self.shares!r})"

    @property
    def expected(self) -> int:
        """What a start charges (whole characters: a tag stays a whole number in a score)."""
        return round(self.shares.expected)

    async def charge(self, flight: Flight, service: float) -> None:
        """``flight``'s call ended having cost ``service``: its share pays the difference."""
        if flight.share is None or flight.charged is None:
            return
        self.shares.served(flight.share, service)
        delta, flight.charged = round(service - flight.charged), None
        keys = self._keys
        script = self._script(
            keys=[keys.fair_counters, keys.line, keys.fair_clock],
            args=[keys.prefix, flight.share, delta, keys.wake, REORDERED],
        )
        await call(script)
