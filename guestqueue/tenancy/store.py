"""Where the catalog (tenancy/catalog.py) is kept: SQLite, and Redis when several instances share it.

- SQLite: the request log's file (tables from store.py's migration 3), so
  applications, key hashes and run-time lines survive a restart.
- Redis (``GUEST_REDIS_URL``): the one copy every instance agrees on. A change
  is written there with a version bump; every instance reads the version every
  ``POLL_S`` and reloads on a change, so a revoked key or a new line reaches
  every instance within a second.

Redis can forget (a restart without persistence, a flush, a failover to an older
copy). So the catalog is versioned, and every instance writes what it loads
through to its SQLite file with the version it had (``catalog_meta``): each
instance holds the newest catalog it has seen. An instance that finds Redis
with no catalog, or an older version than its own, puts its own back
(``scripts/catalog_seed.lua``, which never replaces a version by an older one):
of several instances doing so, the newest catalog wins, so a revoked key never
works again, and lines and keys made at run time go on working on every
instance meanwhile (each keeps its catalog in memory). An instance starting
with an older file than Redis's simply loads Redis's.

Without either (``GUEST_DB_PATH`` empty, no Redis) the catalog lives in memory
only, and the start-up banner says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import redis.asyncio as aioredis

from ..errors import LineUnavailable
from ..lines.redis.boundary import logged, unavailable
from ..requestlog import migrate
from ..scripts import load_script
from ..stopping import raise_if_cancelled, stop_tasks
from .catalog import ApiKey, Application, Catalog

logger = logging.getLogger("guestqueue.tenancy.catalog")
VERSION_SQL = "INSERT OR REPLACE INTO catalog_meta (key, value) VALUES ('version', ?)"
POLL_S = 0.25
UNWRITABLE = (
    "The shared catalog (Redis, GUEST_REDIS_URL) cannot be written right now: it is down or out of"
    " memory. Nothing was changed; try again in a few seconds."
)


class CatalogStore:
    def __init__(self, catalog: Catalog, *, db_path: str, redis: aioredis.Redis | None, prefix: str) -> None:
        self.catalog = catalog
        self._db_path = db_path
        self._db: aiosqlite.Connection | None = None
        self._redis = redis
        self._key = f"{prefix}:catalog"
        self._version: int | None = None  # of the catalog in memory (Redis's, when it was read)
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seed_script = redis.register_script(load_script("catalog_seed")) if redis is not None else None
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
        self.catalog.load(applications, keys, lines)
        self._version = await self._read_version()
        if self._redis is not None:
            await warn_if_forgetful(self._redis)
            await self._reload()  # Redis's if it is as new as ours; ours put back if Redis has less
            self._poller = asyncio.create_task(self._poll(), name="guestqueue-catalog-poll")

    async def close(self) -> None:
        if self._poller is not None:
            await stop_tasks([self._poller])
        if self._db is not None:
            await self._db.close()

    # -- changes -----------------------------------------------------------------------

    async def put_application(self, application: Application) -> None:
        await self._put(
            "applications",
            application.id,
            application,
            _dump(application),
            "INSERT OR REPLACE INTO applications (id, body) VALUES (?, ?)",
            (application.id,),
        )

    async def put_key(self, key: ApiKey) -> None:
        await self._put(
            "keys",
            key.id,
            key,
            _dump(key),
            "INSERT OR REPLACE INTO api_keys (id, application_id, body) VALUES (?, ?, ?)",
            (key.id, key.application_id),
        )

    async def put_line(self, name: str, stored: dict[str, Any] | None) -> None:
        """Store a run-time line's keys, or forget it (None)."""
        body = json.dumps(stored) if stored is not None else None
        sql = (
            "INSERT OR REPLACE INTO lines (name, body) VALUES (?, ?)"
            if stored is not None
            else "DELETE FROM lines WHERE name = ?"
        )
        await self._put("lines", name, stored, body, sql, (name,))

    async def _put(self, kind: str, ident: str, item: Any, body: str | None, sql: str, params: tuple[Any, ...]) -> None:
        """Store ``item`` (None: forget it) as ``kind`` ``ident``: where every instance reads it first
        (Redis), then the file, then the catalog in memory. A write refused makes nothing after it
        happen, so this process never keeps a change the shared copy does not have."""
        async with self._lock:
            version = await self._put_shared(kind, ident, body) if self._redis is not None else None
            table: dict[str, Any] = getattr(self.catalog, kind)  # load() may have replaced it meanwhile
            if item is None:
                table.pop(ident, None)
            else:
                table[ident] = item
            forgotten = version is not None and self._version is not None and version <= self._version
            if forgotten:
                # Redis had lost the catalog (this change's version started again from nothing): ours,
                # with this change, goes back as the next version, before an older one can.
                assert self._version is not None
                version = self._version + 1
                # If Redis fails here, the poller puts it back at its next round.
                await logged(self._seed(version), "the shared catalog was not put back yet")
            # The version moves with this change only if no other instance's came between (else the
            # poller loads them all, and writes them through): a file's version never claims a
            # change it does not hold.
            follows = version is not None and version == (self._version or 0) + 1
            if follows:
                self._version = version
            if self._db is not None:
                # If this fails after Redis took the change, _version is ahead of the file's: the
                # next change, or the next reload, writes the file's version again.
                await self._db.execute(sql, (*params, body) if body is not None else params)
                if follows:
                    await self._db.execute(VERSION_SQL, (str(version),))
                await self._db.commit()
        await self._changed()

    async def _put_shared(self, kind: str, ident: str, body: str | None) -> int:
        """Write one change and bump the version, or LineUnavailable (503) if Redis is away or full."""
        assert self._redis is not None
        # The detail (an address, "OOM command not allowed") is for the log, not the admin's answer.
        with unavailable(UNWRITABLE):
            async with self._redis.pipeline(transaction=True) as pipe:
                if body is None:
                    pipe.hdel(f"{self._key}:{kind}", ident)
                else:
                    pipe.hset(f"{self._key}:{kind}", ident, body)
                pipe.incr(f"{self._key}:version")
                _, version = await pipe.execute()
        return int(version)

    async def _changed(self) -> None:
        for hook in self.on_change:
            await hook()

    # -- reading -----------------------------------------------------------------------

    async def _read_sqlite(self) -> tuple[list[Application], list[ApiKey], dict[str, dict[str, Any]]]:
        if self._db is None:
            return [], [], {}
        applications = [
            _application(json.loads(body))
            for (body,) in await self._db.execute_fetchall("SELECT body FROM applications")
        ]
        keys = [_key(json.loads(body)) for (body,) in await self._db.execute_fetchall("SELECT body FROM api_keys")]
        lines = {
            name: json.loads(body) for name, body in await self._db.execute_fetchall("SELECT name, body FROM lines")
        }
        return applications, keys, lines

    async def _read_version(self) -> int | None:
        if self._db is None:
            return None
        rows = await self._db.execute_fetchall("SELECT value FROM catalog_meta WHERE key = 'version'")
        return int(next(iter(rows))[0]) if rows else None

    async def _write_through(self, version: int) -> None:
        """The catalog just loaded, into this instance's file, unless the file already holds as new a
        version (several instances may share one file)."""
        if self._db is None:
            return
        known = await self._read_version()
        if known is not None and known >= version:
            return
        catalog = self.catalog
        await self._db.execute("DELETE FROM applications")
        await self._db.execute("DELETE FROM api_keys")
        await self._db.execute("DELETE FROM lines")
        await self._db.executemany(
            "INSERT INTO applications (id, body) VALUES (?, ?)",
            [(app.id, _dump(app)) for app in catalog.applications.values()],
        )
        await self._db.executemany(
            "INSERT INTO api_keys (id, application_id, body) VALUES (?, ?, ?)",
            [(key.id, key.application_id, _dump(key)) for key in catalog.keys.values()],
        )
        await self._db.executemany(
            "INSERT INTO lines (name, body) VALUES (?, ?)",
            [(name, json.dumps(stored)) for name, stored in catalog.lines.items()],
        )
        await self._db.execute(VERSION_SQL, (str(version),))
        await self._db.commit()

    async def _seed(self, version: int | None = None) -> bool:
        """Put this instance's catalog back in Redis (as ``version``, by default its own) if Redis has
        none or an older one."""
        assert self._redis is not None and self._seed_script is not None
        catalog, version = self.catalog, version if version is not None else self._version or 0
        if version == 0 and not (catalog.applications or catalog.keys or catalog.lines):
            return False  # nothing was ever made: nothing to put back
        pairs: list[str] = []
        for table in (
            {app.id: _dump(app) for app in catalog.applications.values()},
            {key.id: _dump(key) for key in catalog.keys.values()},
            {name: json.dumps(stored) for name, stored in catalog.lines.items()},
        ):
            for ident, body in table.items():
                pairs += (ident, body)
        k = self._key
        seeded = await self._seed_script(
            keys=[f"{k}:version", f"{k}:applications", f"{k}:keys", f"{k}:lines"],
            args=[version, len(catalog.applications), len(catalog.keys), len(catalog.lines), *pairs],
        )
        if seeded:
            logger.warning(
                "the shared catalog was missing or older in Redis: put back from this instance (version "
                "%d: %d applications, %d keys, %d lines)",
                version,
                len(catalog.applications),
                len(catalog.keys),
                len(catalog.lines),
            )
        return bool(seeded)

    async def _reload(self) -> bool:
        """Read the shared catalog if its version moved; True if it did. A Redis that forgot it
        (none, or older than ours) gets ours back first."""
        assert self._redis is not None
        raw = await self._redis.get(f"{self._key}:version")
        if raw is None or (self._version is not None and int(raw) < self._version):
            await self._seed()
            raw = await self._redis.get(f"{self._key}:version")
        if raw is None or int(raw) == self._version:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(f"{self._key}:version")
            pipe.hvals(f"{self._key}:applications")
            pipe.hvals(f"{self._key}:keys")
            pipe.hgetall(f"{self._key}:lines")
            raw, applications, keys, lines = await pipe.execute()
        if raw is None:
            return False  # forgotten again between the two reads: the next poll puts it back
        self.catalog.load(
            [_application(json.loads(body)) for body in applications],
            [_key(json.loads(body)) for body in keys],
            {name.decode(): json.loads(body) for name, body in lines.items()},
        )
        self._version = int(raw)
        try:
            await self._write_through(self._version)
        except (sqlite3.Error, OSError) as exc:  # the file stays older: Redis, and this memory, are right
            logger.warning("the catalog (version %d) was not written to %s: %s", self._version, self._db_path, exc)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                with unavailable():
                    reloaded = await self._reload()
                if reloaded:
                    await self._changed()
            except LineUnavailable as exc:  # Redis away: keep the last catalog, try again
                raise_if_cancelled()
                logger.warning("cannot read the shared catalog: %s", exc.__cause__)
            except Exception:
                logger.exception("catalog reload failed")


async def warn_if_forgetful(redis: aioredis.Redis) -> None:
    """Say once, at start-up, when Redis keeps nothing on disk: a restart empties it (guestqueue
    rebuilds the catalog from its instances, but a production Redis should not forget)."""
    try:
        with unavailable(quiet=True):
            persistence = await redis.info("persistence")
            save = (await redis.config_get("save")).get("save", "")
    except LineUnavailable as exc:  # a managed Redis may refuse CONFIG: nothing to say then
        raise_if_cancelled()
        logger.debug("Redis persistence not known: %s", exc.__cause__)
        return
    if not int(persistence.get("aof_enabled", 0)) and not str(save).strip():
        logger.warning(
            "Redis keeps nothing on disk (no appendonly, no save points): a restart empties it. "
            "guestqueue rebuilds its lines, sessions and catalog (guests wait a few seconds), but "
            "use appendonly yes (docs/design.md, Several instances)"
        )


def _dump(item: Application | ApiKey) -> str:
    return json.dumps(dataclasses.asdict(item))


def _application(body: dict[str, Any]) -> Application:
    return Application(**body)


def _key(body: dict[str, Any]) -> ApiKey:
    body["permissions"] = {line: tuple(granted) for line, granted in body.get("permissions", {}).items()}
    return ApiKey(**body)
