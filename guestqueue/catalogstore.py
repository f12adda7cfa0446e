"""Where the catalog (catalog.py) is kept: SQLite, and Redis when several instances share it.

- SQLite: the request log's file (tables from store.py's migration 3), so
  applications, key hashes and run-time lines survive a restart.
- Redis (``GUEST_REDIS_URL``): the one copy every instance agrees on. A change
  is written there with a version bump; every instance reads the version every
  ``POLL_S`` and reloads on a change, so a revoked key or a new line reaches
  every instance within a second. A fresh Redis is seeded from the first
  instance's SQLite file.

Without either (``GUEST_DB_PATH`` empty, no Redis) the catalog lives in memory
only, and the start-up banner says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .catalog import ApiKey, Application, Catalog
from .errors import LineUnavailable
from .stopping import raise_if_cancelled, stop_tasks
from .store import migrate

logger = logging.getLogger("guestqueue.catalog")
POLL_S = 0.25
UNWRITABLE = ("The shared catalog (Redis, GUEST_REDIS_URL) cannot be written right now: it is down or out of"
              " memory. Nothing was changed; try again in a few seconds.")


class CatalogStore:
    def __init__(self, catalog: Catalog, *, db_path: str, redis: aioredis.Redis | None, prefix: str) -> None:
        self.catalog = catalog
        self._db_path = db_path
        self._db: aiosqlite.Connection | None = None
        self._redis = redis
        self._key = f"{prefix}:catalog"
        self._version: bytes | None = None
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.on_change: list[Callable[[], Awaitable[None]]] = []  # after every change, here or elsewhere

    def __repr__(self) -> str:
        where = "redis" if self._redis is not None else "sqlite" if self._db_path else "memory"
        return f"CatalogStore({where}, {self.catalog!r})"

    async def open(self) -> None:
        if self._db_path:
            self._db = await aiosqlite.connect(self._db_path)
            await self._db.execute("PRAGMA busy_timeout=5000")
            await migrate(self._db)
        applications, keys, lines = await self._read_sqlite()
        if self._redis is not None:
            if await self._redis.get(f"{self._key}:version") is None and (applications or keys or lines):
                await self._write_redis(applications, keys, lines)  # a fresh Redis: ours is all there is
            await self._reload()
            self._poller = asyncio.create_task(self._poll(), name="guestqueue-catalog-poll")
        else:
            self.catalog.load(applications, keys, lines)

    async def close(self) -> None:
        if self._poller is not None:
            await stop_tasks([self._poller])
        if self._db is not None:
            await self._db.close()

    # -- changes -----------------------------------------------------------------------

    async def put_application(self, application: Application) -> None:
        await self._put("applications", application.id, application, _dump(application),
                        "INSERT OR REPLACE INTO applications (id, body) VALUES (?, ?)", (application.id,))

    async def put_key(self, key: ApiKey) -> None:
        await self._put("keys", key.id, key, _dump(key),
                        "INSERT OR REPLACE INTO api_keys (id, application_id, body) VALUES (?, ?, ?)",
                        (key.id, key.application_id))

    async def put_line(self, name: str, stored: dict[str, Any] | None) -> None:
        """Store a run-time line's keys, or forget it (None)."""
        body = json.dumps(stored) if stored is not None else None
        sql = "INSERT OR REPLACE INTO lines (name, body) VALUES (?, ?)" if stored is not None else \
            "DELETE FROM lines WHERE name = ?"
        await self._put("lines", name, stored, body, sql, (name,))

    async def _put(self, kind: str, ident: str, item: Any, body: str | None, sql: str,
                   params: tuple[Any, ...]) -> None:
        """Store ``item`` (None: forget it) as ``kind`` ``ident``: where every instance reads it first
        (Redis), then the file, then the catalog in memory. A write refused makes nothing after it
        happen, so this process never keeps a change the shared copy does not have."""
        async with self._lock:
            version = await self._put_shared(kind, ident, body) if self._redis is not None else None
            if self._db is not None:
                # If this fails after Redis took the change, _version stays behind: the poller
                # loads the change from Redis, so memory still agrees with the shared copy.
                await self._db.execute(sql, (*params, body) if body is not None else params)
                await self._db.commit()
            table: dict[str, Any] = getattr(self.catalog, kind)  # load() may have replaced it meanwhile
            if item is None:
                table.pop(ident, None)
            else:
                table[ident] = item
            if version is not None:
                self._version = version
        await self._changed()

    async def _put_shared(self, kind: str, ident: str, body: str | None) -> bytes:
        """Write one change and bump the version, or LineUnavailable (503) if Redis is away or full."""
        assert self._redis is not None
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                if body is None:
                    pipe.hdel(f"{self._key}:{kind}", ident)
                else:
                    pipe.hset(f"{self._key}:{kind}", ident, body)
                pipe.incr(f"{self._key}:version")
                _, version = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise_if_cancelled()
            # The detail (an address, "OOM command not allowed") is for the log, as for guests (lines/redis.py).
            logger.warning("cannot write the shared catalog: %s", exc)
            raise LineUnavailable(UNWRITABLE, retry_after_s=5) from exc
        return str(version).encode()

    async def _changed(self) -> None:
        for hook in self.on_change:
            await hook()

    # -- reading -----------------------------------------------------------------------

    async def _read_sqlite(self) -> tuple[list[Application], list[ApiKey], dict[str, dict[str, Any]]]:
        if self._db is None:
            return [], [], {}
        applications = [_application(json.loads(body)) for (body,) in
                        await self._db.execute_fetchall("SELECT body FROM applications")]
        keys = [_key(json.loads(body)) for (body,) in await self._db.execute_fetchall("SELECT body FROM api_keys")]
        lines = {name: json.loads(body) for name, body in
                 await self._db.execute_fetchall("SELECT name, body FROM lines")}
        return applications, keys, lines

    async def _write_redis(self, applications: list[Application], keys: list[ApiKey],
                           lines: dict[str, dict[str, Any]]) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            for app in applications:
                pipe.hset(f"{self._key}:applications", app.id, _dump(app))
            for key in keys:
                pipe.hset(f"{self._key}:keys", key.id, _dump(key))
            for name, stored in lines.items():
                pipe.hset(f"{self._key}:lines", name, json.dumps(stored))
            pipe.incr(f"{self._key}:version")
            await pipe.execute()

    async def _reload(self) -> bool:
        """Read the shared catalog if its version moved; True if it did."""
        assert self._redis is not None
        version = await self._redis.get(f"{self._key}:version")
        if version == self._version:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(f"{self._key}:version")
            pipe.hvals(f"{self._key}:applications")
            pipe.hvals(f"{self._key}:keys")
            pipe.hgetall(f"{self._key}:lines")
            version, applications, keys, lines = await pipe.execute()
        self.catalog.load(
            [_application(json.loads(body)) for body in applications], [_key(json.loads(body)) for body in keys],
            {name.decode(): json.loads(body) for name, body in lines.items()},
        )
        self._version = version
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                if await self._reload():
                    await self._changed()
            except (RedisError, OSError) as exc:  # Redis away: keep the last catalog, try again
                raise_if_cancelled()
                logger.warning("cannot read the shared catalog: %s", exc)
            except Exception:
                logger.exception("catalog reload failed")


def _dump(item: Application | ApiKey) -> str:
    return json.dumps(dataclasses.asdict(item))


def _application(body: dict[str, Any]) -> Application:
    return Application(**body)


def _key(body: dict[str, Any]) -> ApiKey:
    body["permissions"] = {line: tuple(granted) for line, granted in body.get("permissions", {}).items()}
    return ApiKey(**body)
