"""The shared line's pacer (lines/base.py's Pacer on Redis): an upstream's Retry-After holds every
instance's starts, and retries take turns, all timed on Redis ``TIME``."""

from __future__ import annotations

import asyncio
import math
import secrets

import redis.asyncio as aioredis

from ...scripts import load_script
from .boundary import call, logged
from .keys import Keys
from .starts import Limits


class RedisPacer:
    def __init__(self, redis: aioredis.Redis, keys: Keys, limits: Limits, *, max_hold_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._limits = limits  # the line's (its interval changes with it)
        self.max_hold_s = max_hold_s
        self._hold = redis.register_script(load_script("line_hold"))
        self._retry = redis.register_script(load_script("line_retry_turn"))

    async def hold(self, delay_s: float) -> None:
        if math.isnan(delay_s) or delay_s <= 0:
            return
        delay_ms = round(min(delay_s, self.max_hold_s) * 1000)
        await call(self._hold(keys=[self._keys.pace, self._keys.held], args=[delay_ms]))

    async def retry_turn(self) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        token = secrets.token_hex(8)
        keys = [self._keys.pace, self._keys.retrying]
        try:
            while (wait_ms := int(await call(self._retry(keys=keys, args=[token, self._limits.interval_ms])))) > 0:
                await asyncio.sleep(wait_ms / 1000)
        finally:
            given_back = logged(self._redis.zrem(self._keys.retrying, token), "a retry's turn not given back")
            await asyncio.shield(given_back)
        return loop.time() - began
