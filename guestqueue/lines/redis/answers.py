"""The answer cache shared by every instance of a line (GUEST_REDIS_URL with GUEST_CACHE_SIZE > 0).

Each instance keeps its own in-process cache (cache.py) in front; a miss
there asks Redis, and every completed answer goes to both. So an answer
cached on one instance is a hit on all. Entries expire after
GUEST_CACHE_TTL_SEC; Redis's own memory policy bounds their number (the
in-process cache keeps GUEST_CACHE_SIZE). The key includes the session id
(cache.py), so one session's answer never reaches another. Single-flight
(identical questions riding one call) stays per instance.
"""

from __future__ import annotations

import hashlib
import json
import logging

import redis.asyncio as aioredis

from ...cache import CachedAnswer
from ...errors import LineUnavailable
from .boundary import logged, unavailable
from .keys import Keys

logger = logging.getLogger("guestqueue.lines.redis.answers")


class RedisAnswers:
    def __init__(self, redis: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def _key(self, key: str) -> str:
        return self._keys.answer(hashlib.sha256(key.encode()).hexdigest())

    async def get(self, key: str) -> CachedAnswer | None:
        """The shared answer, or None (also when Redis cannot be asked: the upstream can)."""
        try:
            with unavailable():
                raw = await self._redis.get(self._key(key))
        except LineUnavailable as exc:
            logger.warning("shared cache not read: %s", exc.__cause__)
            return None
        if raw is None:
            return None
        chunks, suggested = json.loads(raw)
        return CachedAnswer(tuple(chunks), list(suggested))

    async def put(self, key: str, answer: CachedAnswer) -> None:
        value = json.dumps([list(answer.chunks), answer.suggested_questions])
        await logged(self._redis.set(self._key(key), value, px=self._ttl_ms), "shared cache not written")
