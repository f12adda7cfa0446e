"""The request log's writer: one task that drains the buffer (buffer.py) into SQLite.

Each batch is one ``executemany`` of INSERTs (admissions) then one of UPDATEs (start and end, on
the same row) and one commit. A request's INSERT is always recorded before its UPDATEs, so
inserts-first keeps every row's order. Each aiosqlite call is a thread hop (~85 µs), so per-row
awaits would cap the log near 5 000 rows/s; batches reach hundreds of thousands.

Between batches the writer beats this instance's heartbeat into the file (writers.py) and prunes:
rows older than ``retention_days`` (and no longer open) are deleted at start-up and then hourly,
``PRUNE_BATCH_ROWS`` at a time, so pruning never holds the writes up for long.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiosqlite

from .buffer import RowBuffer
from .rows import valid_row
from .schema import INSERT, PRUNE, UPDATE
from .writers import HEARTBEATS_PER_TTL, abandon_dead

logger = logging.getLogger("guestqueue.requestlog")

PRUNE_BATCH_ROWS = 2000
PRUNE_EVERY_S = 3600.0
RETRY_AFTER_ERROR_S = 1.0


class BatchWriter:
    def __init__(
        self,
        rows: RowBuffer,
        wake: asyncio.Event,
        *,
        instance_id: str,
        instance_ttl_s: float,
        retention_days: float,
    ) -> None:
        """``wake``: set when there is work (rows came in); the writer's timers and :meth:`stop`
        set it too."""
        self._rows = rows
        self._wake = wake
        self._instance_id = instance_id
        self._instance_ttl_s = instance_ttl_s
        self._retention_days = retention_days
        self._started_at = time.time()
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._heartbeat_due = False
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._prune_due = False
        self._prune_timer: asyncio.TimerHandle | None = None
        self.rows_written = 0
        self.rows_pruned = 0
        self.batches = 0
        self.failing = False

    async def abandon_dead(self, db: aiosqlite.Connection) -> int:
        """Beat our heartbeat, close the open rows of dead instances (writers.py); how many."""
        return await abandon_dead(db, self._instance_id, self._started_at, self._instance_ttl_s)

    def start(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._schedule_heartbeat()
        self._prune_due = self._retention_days > 0
        self._task = asyncio.create_task(self._write_loop(), name="guestqueue-log-writer")
        self._wake.set()

    async def stop(self) -> None:
        """Write every row buffered (unless SQLite fails), then stop."""
        self._closing = True
        self._wake.set()
        for timer in (self._prune_timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        if self._task is not None:
            await self._task

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            inserts, updates = self._rows.take()
            if inserts or updates:
                try:
                    await self._db.executemany(INSERT, inserts)
                    await self._db.executemany(UPDATE, updates)
                    await self._db.commit()
                except UnicodeEncodeError:
                    # Text SQLite cannot take (a lone surrogate): retried as is, this batch would fail
                    # forever and every later row with it. Write it with U+FFFD instead, at once.
                    await self._db.rollback()
                    self._rows.put_back([valid_row(row) for row in inserts], [valid_row(row) for row in updates])
                    continue
                except Exception:
                    # Keep the rows (in order) and try again; /health reports the log as behind.
                    logger.exception("request log write failed; retrying")
                    self.failing = True
                    await self._db.rollback()
                    self._rows.put_back(inserts, updates)
                    if self._closing:
                        return
                    await asyncio.sleep(RETRY_AFTER_ERROR_S)
                    continue
                self.failing = False
                self._rows.written()
                self.rows_written += len(inserts) + len(updates)
                self.batches += 1
            if self._closing and not self._rows.backlog:
                return
            if self._heartbeat_due and not self._closing:
                await self._heartbeat()
            if self._prune_due and not self._closing:
                await self._prune_batch()

    async def _heartbeat(self) -> None:
        """Tell other instances on this file we are alive; close what dead ones left open."""
        assert self._db is not None
        self._heartbeat_due = False
        try:
            abandoned = await self.abandon_dead(self._db)
            await self._db.commit()
        except Exception:
            logger.exception("request log heartbeat failed; trying again")
            await self._db.rollback()
        else:
            if abandoned:
                logger.warning("marked %d requests left open by a stopped instance as abandoned", abandoned)
        self._schedule_heartbeat()

    def _schedule_heartbeat(self) -> None:
        self._heartbeat_timer = asyncio.get_running_loop().call_later(
            self._instance_ttl_s / HEARTBEATS_PER_TTL, self._heartbeat_again
        )

    def _heartbeat_again(self) -> None:
        self._heartbeat_due = True
        self._wake.set()

    async def _prune_batch(self) -> None:
        """Delete one batch of rows past the retention; wake again for the next, or come back in an hour."""
        assert self._db is not None
        cutoff = time.time() - self._retention_days * 86_400
        try:
            cursor = await self._db.execute(PRUNE, (cutoff, PRUNE_BATCH_ROWS))
            await self._db.commit()
        except Exception:
            logger.exception("request log pruning failed; trying again later")
            await self._db.rollback()
            deleted = 0
        else:
            deleted = cursor.rowcount
            self.rows_pruned += deleted
        if deleted >= PRUNE_BATCH_ROWS:
            self._wake.set()  # more to delete, after whatever rows came in meanwhile
            return
        self._prune_due = False
        self._prune_timer = asyncio.get_running_loop().call_later(PRUNE_EVERY_S, self._prune_again)

    def _prune_again(self) -> None:
        self._prune_due = True
        self._wake.set()
