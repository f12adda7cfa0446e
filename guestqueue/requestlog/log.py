"""The SQLite request log: one row per request, written by one batching task.

Callers never wait on SQLite: :meth:`RequestLog.record` snapshots the ticket
into a tuple and appends it to a buffer; the writer task drains the buffer
with one ``executemany`` of INSERTs (admissions) then one of UPDATEs (start and
end, on the same row) and one commit per batch. A request's INSERT is always
recorded before its UPDATEs, so inserts-first keeps every row's order. Each aiosqlite call is a
thread hop (~85 µs), so per-row awaits would cap the log near 5 000 rows/s;
batches reach hundreds of thousands.

Schema (times are Unix seconds, durations milliseconds)::

    requests(request_id TEXT PRIMARY KEY, client TEXT, query TEXT, parameters TEXT (JSON),
             session_id TEXT, status TEXT, error_code TEXT, error TEXT, answer TEXT,
             cached INTEGER, created_at REAL, started_at REAL, finished_at REAL,
             wait_ms REAL, processing_ms REAL, instance_id TEXT)

``status`` is ``queued`` or ``processing`` while a request is open, then one of
``completed failed timeout cancelled``; ``rejected`` for a 429 or 503; ``abandoned``
for rows a crashed process left open.

Several processes may share one file. Each row carries its writer's
``instance_id``, and each writer beats a heartbeat into
``instances(instance_id, host, pid, started_at, heartbeat_at)`` three times per
``GUEST_INSTANCE_TTL_SEC``. An instance marks ``abandoned`` only the open rows
of instances whose heartbeat is older than that, or, on the same host, whose
process is gone (and rows from before instances), at start-up and at each
heartbeat: a live neighbour's rows are never touched, a crashed one's are
closed within seconds without a restart, and at once by a restart on its host.

Rejected rows keep no query text: ``query`` is ``''`` and ``parameters`` holds
``{"query_chars": N, "query_sha256": "<first 16 hex digits>"}``. A flood of
refused 4 000-character questions otherwise grew the file by tens of MB/s.
They are also sampled: at most one row per client per
``REJECTION_ROW_EVERY_S``; the next row of that client carries how many were
left out (``"suppressed": n``), and :attr:`RequestLog.rejections_unlogged`
counts them all (exact totals per reason are in ``/metrics`` anyway).

Bounds, so a log that cannot keep up or cannot write never takes the process
down with it:

- the buffer holds at most ``buffer_rows`` rows. Beyond it a *new* request's
  row (its admission and, later, its start and end) or a rejection row is
  dropped and counted in :attr:`RequestLog.rows_dropped`; the start and end
  of a request whose admission is already buffered are always kept, since
  dropping them would leave its row open (and later called ``abandoned``).
  Those are at most two per live request, which admission bounds.
- rows older than ``retention_days`` (and no longer open) are deleted by the
  writer itself, at start-up and then hourly, ``PRUNE_BATCH_ROWS`` at a time
  between batches of writes, so pruning never holds the writes up for long.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
from cachetools import TTLCache

from ..linespec import DEFAULT_LINE
from ..tickets import Status, Ticket
from .rows import admission_row, change_row, rejection_row, valid_row
from .schema import (
    INSERT,
    LEAVE,
    PREPARE,
    PRUNE,
    UPDATE,
    LogUnavailable,
    check_path,
    migrate,
)
from .writers import HEARTBEATS_PER_TTL, abandon_dead

logger = logging.getLogger("guestqueue.requestlog")
LOG_BACKLOG_DEGRADED = 10_000  # /health is degraded when this many rows wait to be written
LOG_DROPS_DEGRADED_S = 300.0  # ... or when the log dropped rows (its buffer was full) this recently

PRUNE_BATCH_ROWS = 2000
PRUNE_EVERY_S = 3600.0
RETRY_AFTER_ERROR_S = 1.0
REJECTION_ROW_EVERY_S = 1.0  # per client
REJECTION_CLIENTS = 10_000  # clients whose last rejection row is remembered (least recent forgotten first)
REJECTION_MEMORY_S = 60.0  # ... and for how long, to carry their suppressed count into their next row


@dataclass(slots=True)
class _Sampled:
    row_at: float  # monotonic time of this client's last rejection row
    suppressed: int = 0  # rejections since then that got no row


class RequestLog:
    """Usage::

    log = RequestLog("guestqueue.db")
    await log.open()          # creates the schema, marks rows dead instances left open as abandoned
    log.record(ticket)        # never blocks: admission, start and end of each request
    await log.close()         # flushes everything, then closes

    ``open`` raises :class:`LogUnavailable` (and leaves nothing open) when the
    file cannot be written: a missing directory, a directory, a read-only file,
    a file that is not SQLite.
    """

    def __init__(
        self,
        path: str,
        *,
        buffer_rows: int = 100_000,
        retention_days: float = 30.0,
        instance_ttl_s: float = 5.0,
        instance_id: str | None = None,
    ) -> None:
        self.path = path
        self.buffer_rows = buffer_rows
        self.retention_days = retention_days
        self.instance_ttl_s = instance_ttl_s
        self.instance_id = instance_id or secrets.token_hex(8)
        self._started_at = time.time()
        self._heartbeat_due = False
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._db: aiosqlite.Connection | None = None
        self._inserts: list[tuple[Any, ...]] = []
        self._updates: list[tuple[Any, ...]] = []
        self._writing = 0  # rows of the batch being written: still in memory, still count against the buffer
        self._unlogged: set[str] = set()  # live requests whose admission row was dropped
        self._sampled: TTLCache[str, _Sampled] = TTLCache(maxsize=REJECTION_CLIENTS, ttl=REJECTION_MEMORY_S)
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._prune_due = False
        self._prune_timer: asyncio.TimerHandle | None = None
        self.rows_written = 0
        self.rows_dropped = 0
        self.last_drop_at: float | None = None  # monotonic
        self.rows_pruned = 0
        self.rejections_unlogged = 0
        self.batches = 0
        self.failing = False
        self.abandoned_at_start = 0

    def __repr__(self) -> str:
        return (
            f"RequestLog(path={self.path!r}, written={self.rows_written}, backlog={self.backlog}, "
            f"dropped={self.rows_dropped})"
        )

    @property
    def backlog(self) -> int:
        return len(self._inserts) + len(self._updates) + self._writing

    def dropped_within(self, seconds: float) -> bool:
        return self.last_drop_at is not None and time.monotonic() - self.last_drop_at < seconds

    async def open(self) -> None:
        check_path(self.path)
        try:
            db = await aiosqlite.connect(self.path)  # stops its own thread if this fails
        except sqlite3.Error as exc:
            raise LogUnavailable(str(exc)) from None
        try:
            await db.executescript(PREPARE)
            await migrate(db)
            # Take the write lock now: a read-only file fails here, not at the first batch of rows.
            await db.execute("BEGIN IMMEDIATE")
            self.abandoned_at_start = await self._abandon_dead(db)
            await db.commit()
        except BaseException as exc:
            # aiosqlite's thread is not a daemon: left running, it keeps the process from exiting.
            await db.close()
            if isinstance(exc, sqlite3.Error):
                raise LogUnavailable(str(exc)) from None
            raise
        if self.abandoned_at_start:
            logger.warning("marked %d requests left open by a stopped instance as abandoned", self.abandoned_at_start)
        self._db = db
        self._schedule_heartbeat()
        self._prune_due = self.retention_days > 0
        self._writer = asyncio.create_task(self._write_loop(), name="guestqueue-log-writer")
        self._wake.set()

    def for_line(self, line: str) -> LineRows:
        """The request listener (service.py) of one line: its rows carry the line's name."""
        return LineRows(self, line)

    def record(self, ticket: Ticket, line: str = DEFAULT_LINE) -> None:
        """Log the ticket as it is now: its admission (the row's INSERT), its start or its end."""
        if ticket.status is Status.QUEUED:
            if self.backlog >= self.buffer_rows:
                self._unlogged.add(ticket.id)
                self._dropped()
                return
            self._inserts.append(admission_row(ticket, self.instance_id, line))
        elif ticket.id in self._unlogged:
            if ticket.done:
                self._unlogged.discard(ticket.id)
            return
        else:
            self._updates.append(change_row(ticket, self.instance_id))
        self._wake.set()

    # -- a RequestListener (core.py): every admission, start and end is a row change --

    def admitted(self, ticket: Ticket) -> None:
        self.record(ticket)

    def started(self, ticket: Ticket) -> None:
        self.record(ticket)

    def ended(self, ticket: Ticket) -> None:
        self.record(ticket)

    def rejected(self, client: str, query: str, code: str) -> None:
        self.record_rejection(client, query, code)

    def problems(self) -> list[str]:
        """What /health should say about the log."""
        problems = []
        if self.failing or self.backlog > LOG_BACKLOG_DEGRADED:
            problems.append(f"request log behind ({self.backlog} rows waiting)")
        if self.dropped_within(LOG_DROPS_DEGRADED_S):
            problems.append(f"request log dropped {self.rows_dropped} rows (its buffer of {self.buffer_rows} was full)")
        return problems

    def record_rejection(self, client: str, query: str, code: str, line: str = DEFAULT_LINE) -> None:
        """A 429/503: a row without the query's text, at most one per client per ``REJECTION_ROW_EVERY_S``."""
        now = time.monotonic()
        sampled = self._sampled.get(client)
        if sampled is not None and now - sampled.row_at < REJECTION_ROW_EVERY_S:
            sampled.suppressed += 1  # in place: assigning would restart the entry's TTL
            self.rejections_unlogged += 1
            return
        if self.backlog >= self.buffer_rows:
            self._dropped()
            return
        self._sampled[client] = _Sampled(now)
        suppressed = sampled.suppressed if sampled is not None else 0
        self._inserts.append(rejection_row(client, query, code, suppressed, self.instance_id, line))
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        for timer in (self._prune_timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        try:
            if self._writer is not None:
                await self._writer
            if self._db is not None and not self.backlog:
                await self._db.execute(LEAVE, (self.instance_id,))  # every row of ours is written: none open
                await self._db.commit()
        finally:
            # Even when cancelled (a forced exit): aiosqlite's thread is not a daemon, so a
            # connection left open keeps the process alive after everything else has stopped.
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()

    def _dropped(self) -> None:
        if not self.rows_dropped:
            logger.error("request log buffer full (%d rows): dropping new rows", self.buffer_rows)
        self.rows_dropped += 1
        self.last_drop_at = time.monotonic()

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            inserts, updates = self._inserts, self._updates
            self._inserts, self._updates = [], []
            if inserts or updates:
                self._writing = len(inserts) + len(updates)
                try:
                    await self._db.executemany(INSERT, inserts)
                    await self._db.executemany(UPDATE, updates)
                    await self._db.commit()
                except UnicodeEncodeError:
                    # Text SQLite cannot take (a lone surrogate): retried as is, this batch would fail
                    # forever and every later row with it. Write it with U+FFFD instead, at once.
                    await self._db.rollback()
                    self._put_back([valid_row(row) for row in inserts], [valid_row(row) for row in updates])
                    continue
                except Exception:
                    # Keep the rows (in order) and try again; /health reports the log as behind.
                    logger.exception("request log write failed; retrying")
                    self.failing = True
                    await self._db.rollback()
                    self._put_back(inserts, updates)
                    if self._closing:
                        return
                    await asyncio.sleep(RETRY_AFTER_ERROR_S)
                    continue
                self.failing = False
                self._writing = 0
                self.rows_written += len(inserts) + len(updates)
                self.batches += 1
            if self._closing and not self.backlog:
                return
            if self._heartbeat_due and not self._closing:
                await self._heartbeat()
            if self._prune_due and not self._closing:
                await self._prune_batch()

    async def _abandon_dead(self, db: aiosqlite.Connection) -> int:
        return await abandon_dead(db, self.instance_id, self._started_at, self.instance_ttl_s)

    async def _heartbeat(self) -> None:
        """Tell other instances on this file we are alive; close what dead ones left open."""
        assert self._db is not None
        self._heartbeat_due = False
        try:
            abandoned = await self._abandon_dead(self._db)
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
            self.instance_ttl_s / HEARTBEATS_PER_TTL, self._heartbeat_again
        )

    def _heartbeat_again(self) -> None:
        self._heartbeat_due = True
        self._wake.set()

    async def _prune_batch(self) -> None:
        """Delete one batch of rows past the retention; wake again for the next, or come back in an hour."""
        assert self._db is not None
        cutoff = time.time() - self.retention_days * 86_400
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

    def _put_back(self, inserts: list[tuple[Any, ...]], updates: list[tuple[Any, ...]]) -> None:
        self._writing = 0
        self._inserts[:0] = inserts
        self._updates[:0] = updates
        self._wake.set()


class LineRows:
    """One line's request listener: every admission, start, end and rejection is a row of that line."""

    __slots__ = ("_line", "_log")

    def __init__(self, log: RequestLog, line: str) -> None:
        self._log, self._line = log, line

    def admitted(self, ticket: Ticket) -> None:
        self._log.record(ticket, self._line)

    def started(self, ticket: Ticket) -> None:
        self._log.record(ticket, self._line)

    def ended(self, ticket: Ticket) -> None:
        self._log.record(ticket, self._line)

    def rejected(self, client: str, query: str, code: str) -> None:
        self._log.record_rejection(client, query, code, self._line)
