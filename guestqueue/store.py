"""The SQLite request log: one row per request, written by one batching task.

Callers never wait on SQLite: :meth:`RequestLog.record` snapshots the ticket
into a tuple and appends it to a buffer; the writer task drains the buffer
with one ``executemany`` (an UPSERT, so admission, start and end of a request
land on the same row) and one commit per batch. Each aiosqlite call is a
thread hop (~85 µs), so per-row awaits would cap the log near 5 000 rows/s;
batches reach hundreds of thousands.

Schema (times are Unix seconds, durations milliseconds)::

    requests(request_id TEXT PRIMARY KEY, client TEXT, query TEXT, parameters TEXT (JSON),
             session_id TEXT, status TEXT, error_code TEXT, error TEXT, answer TEXT,
             cached INTEGER, created_at REAL, started_at REAL, finished_at REAL,
             wait_ms REAL, processing_ms REAL)

``status`` is ``queued`` or ``processing`` while a request is open, then one of
``completed failed timeout cancelled``; ``rejected`` for a 429; ``abandoned``
for rows a crashed process left open (marked at the next start-up).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiosqlite

from .tickets import Ticket, new_request_id
from .upstream import valid_text

logger = logging.getLogger("guestqueue.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id    TEXT PRIMARY KEY,
    client        TEXT NOT NULL,
    query         TEXT NOT NULL,
    parameters    TEXT NOT NULL,
    session_id    TEXT,
    status        TEXT NOT NULL,
    error_code    TEXT,
    error         TEXT,
    answer        TEXT,
    cached        INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    wait_ms       REAL,
    processing_ms REAL
);
CREATE INDEX IF NOT EXISTS requests_created_at ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_open ON requests (status) WHERE status IN ('queued', 'processing');
"""

COLUMNS = (
    "request_id", "client", "query", "parameters", "session_id", "status", "error_code", "error", "answer",
    "cached", "created_at", "started_at", "finished_at", "wait_ms", "processing_ms",
)
UPSERT = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT(request_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[5:])
)
ABANDON = (
    "UPDATE requests SET status = 'abandoned', error_code = 'abandoned', finished_at = ? "
    "WHERE status IN ('queued', 'processing')"
)
RETRY_AFTER_ERROR_S = 1.0


class RequestLog:
    """Usage::

    log = RequestLog("guestqueue.db")
    await log.open()          # creates the schema, marks rows a crash left open as abandoned
    log.record(ticket)        # never blocks: admission, start and end of each request
    await log.close()         # flushes everything, then closes
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self.rows_written = 0
        self.batches = 0
        self.failing = False
        self.abandoned_at_start = 0

    def __repr__(self) -> str:
        return f"RequestLog(path={self.path!r}, written={self.rows_written}, backlog={self.backlog})"

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def open(self) -> None:
        db = await aiosqlite.connect(self.path)
        await db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;" + SCHEMA
        )
        cursor = await db.execute(ABANDON, (time.time(),))
        self.abandoned_at_start = cursor.rowcount
        await db.commit()
        if self.abandoned_at_start:
            logger.warning("marked %d requests left open by an earlier run as abandoned", self.abandoned_at_start)
        self._db = db
        self._writer = asyncio.create_task(self._write_loop(), name="guestqueue-log-writer")

    def record(self, ticket: Ticket) -> None:
        self._pending.append((
            ticket.id, ticket.client, ticket.query, _json(ticket.parameters), ticket.session_id,
            ticket.status.value, ticket.error_code, ticket.error, ticket.answer if ticket.done else None,
            int(ticket.cached), ticket.created_at, ticket.started_at, ticket.finished_at,
            ticket.wait_ms, ticket.duration_ms,
        ))
        self._wake.set()

    def record_rejection(self, client: str, query: str, code: str) -> None:
        now = time.time()
        self._pending.append((
            new_request_id(), client, query, "{}", None, "rejected", code, None, None, 0, now, None, now, None, None,
        ))
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, self._pending = self._pending, []
            if rows:
                try:
                    await self._db.executemany(UPSERT, rows)
                    await self._db.commit()
                except UnicodeEncodeError:
                    # Text SQLite cannot take (a lone surrogate): retried as is, this batch would fail
                    # forever and every later row with it. Write it with U+FFFD instead, at once.
                    self._pending[:0] = [_valid_row(row) for row in rows]
                    self._wake.set()
                    continue
                except Exception:
                    # Keep the rows (in order) and try again; /health reports the log as behind.
                    logger.exception("request log write failed; retrying")
                    self.failing = True
                    self._pending[:0] = rows
                    self._wake.set()
                    if self._closing:
                        return
                    await asyncio.sleep(RETRY_AFTER_ERROR_S)
                    continue
                self.failing = False
                self.rows_written += len(rows)
                self.batches += 1
            if self._closing and not self._pending:
                return


def _valid_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(valid_text(value) if isinstance(value, str) else value for value in row)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
