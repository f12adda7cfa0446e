"""The SQLite request log: one row per request, written by one batching task.

Callers never wait on SQLite: :meth:`RequestLog.record` leaves the row in a buffer (buffer.py)
and the writer task (batches.py) writes the buffer in batches.

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
They are also sampled (buffer.py).

Bounds, so a log that cannot keep up or cannot write never takes the process
down with it: the buffer holds at most ``buffer_rows`` rows (buffer.py), and
rows older than ``retention_days`` are pruned by the writer (batches.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3

import aiosqlite

from ..linespec import DEFAULT_LINE
from ..tickets import Ticket
from .batches import BatchWriter
from .buffer import RowBuffer
from .schema import LEAVE, PREPARE, LogUnavailable, check_path, migrate

logger = logging.getLogger("guestqueue.requestlog")
LOG_BACKLOG_DEGRADED = 10_000  # /health is degraded when this many rows wait to be written
LOG_DROPS_DEGRADED_S = 300.0  # ... or when the log dropped rows (its buffer was full) this recently


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
        wake = asyncio.Event()  # the writer's: rows came in, one of its timers fired, or the log closes
        self._rows = RowBuffer(self.instance_id, buffer_rows, wake)
        self._writer = BatchWriter(
            self._rows,
            wake,
            instance_id=self.instance_id,
            instance_ttl_s=instance_ttl_s,
            retention_days=retention_days,
        )
        self._db: aiosqlite.Connection | None = None
        self.abandoned_at_start = 0

    def __repr__(self) -> str:
        return (
            f"RequestLog(path={self.path!r}, written={self.rows_written}, backlog={self.backlog}, "
            f"dropped={self.rows_dropped})"
        )

    # -- what /health and /metrics read ---------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._rows.backlog

    @property
    def rows_dropped(self) -> int:
        return self._rows.rows_dropped

    @property
    def rejections_unlogged(self) -> int:
        return self._rows.rejections_unlogged

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    @property
    def rows_pruned(self) -> int:
        return self._writer.rows_pruned

    @property
    def batches(self) -> int:
        return self._writer.batches

    @property
    def failing(self) -> bool:
        return self._writer.failing

    def dropped_within(self, seconds: float) -> bool:
        return self._rows.dropped_within(seconds)

    def problems(self) -> list[str]:
        """What /health should say about the log."""
        problems = []
        if self.failing or self.backlog > LOG_BACKLOG_DEGRADED:
            problems.append(f"request log behind ({self.backlog} rows waiting)")
        if self.dropped_within(LOG_DROPS_DEGRADED_S):
            problems.append(f"request log dropped {self.rows_dropped} rows (its buffer of {self.buffer_rows} was full)")
        return problems

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
            self.abandoned_at_start = await self._writer.abandon_dead(db)
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
        self._writer.start(db)

    async def close(self) -> None:
        try:
            await self._writer.stop()
            if self._db is not None and not self.backlog:
                await self._db.execute(LEAVE, (self.instance_id,))  # every row of ours is written: none open
                await self._db.commit()
        finally:
            # Even when cancelled (a forced exit): aiosqlite's thread is not a daemon, so a
            # connection left open keeps the process alive after everything else has stopped.
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()

    # -- recording: never waits ----------------------------------------------------------

    def for_line(self, line: str) -> LineRows:
        """The request listener (service.py) of one line: its rows carry the line's name."""
        return LineRows(self, line)

    def record(self, ticket: Ticket, line: str = DEFAULT_LINE) -> None:
        """Log the ticket as it is now: its admission (the row's INSERT), its start or its end."""
        self._rows.record(ticket, line)

    def record_rejection(self, client: str, query: str, code: str, line: str = DEFAULT_LINE) -> None:
        """A 429/503: a row without the query's text, at most one per client per ``REJECTION_ROW_EVERY_S``."""
        self._rows.record_rejection(client, query, code, line)

    # -- a RequestListener (core.py): every admission, start and end is a row change --

    def admitted(self, ticket: Ticket) -> None:
        self.record(ticket)

    def started(self, ticket: Ticket) -> None:
        self.record(ticket)

    def ended(self, ticket: Ticket) -> None:
        self.record(ticket)

    def rejected(self, client: str, query: str, code: str) -> None:
        self.record_rejection(client, query, code)


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
