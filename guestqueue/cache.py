"""Answer cache for common questions (cachetools TTL cache).

Keys are the normalized query (case, surrounding and repeated whitespace do
not matter) plus the parameters plus the session id; only successful answers
are stored, as the chunks they streamed in, so a hit streams the same way::

    cache = AnswerCache(max_size=1000, ttl_s=3600)
    key = cache.key("  What is  guestqueue? ", {}, session_id=None)
    cache.put(key, CachedAnswer(("A ", "queue."), ["More?"]))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    chunks: tuple[str, ...]
    suggested_questions: list[str]


def normalize_query(query: str) -> str:
    return " ".join(query.split()).casefold()


class AnswerCache:
    def __init__(self, max_size: int, ttl_s: float) -> None:
        self._entries: TTLCache[str, CachedAnswer] = TTLCache(maxsize=max_size, ttl=ttl_s)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AnswerCache(size={len(self._entries)}, max_size={self._entries.maxsize})"

    @staticmethod
    def key(query: str, parameters: Mapping[str, Any], session_id: str | None = None) -> str:
        """Also the single-flight key. The session id is part of it because an upstream may
        answer from a session's memory: one session's answer must never reach another."""
        return json.dumps(
            [normalize_query(query), parameters, session_id], sort_keys=True, separators=(",", ":"), default=str
        )

    def get(self, key: str) -> CachedAnswer | None:
        return self._entries.get(key)

    def put(self, key: str, answer: CachedAnswer) -> None:
        self._entries[key] = answer
