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

from .tickets import Status, Ticket, new_request_id
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
INSERT = f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
UPDATED = ("status", "error_code", "error", "answer", "cached", "started_at", "finished_at", "wait_ms", "processing_ms")
UPDATE = f"UPDATE requests SET {', '.join(f'{c} = ?' for c in UPDATED)} WHERE request_id = ?"
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
        self._inserts: list[tuple[Any, ...]] = []
        self._updates: list[tuple[Any, ...]] = []
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
        return len(self._inserts) + len(self._updates)

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
        """Log the ticket as it is now: its admission (the row's INSERT), its start or its end."""
        if ticket.status is Status.QUEUED:
            self._inserts.append((
                ticket.id, ticket.client, ticket.query, _json(ticket.parameters), ticket.session_id,
                ticket.status.value, None, None, None, int(ticket.cached), ticket.created_at, None, None, None, None,
            ))
        else:
            self._updates.append((
                ticket.status.value, ticket.error_code, ticket.error, ticket.answer if ticket.done else None,
                int(ticket.cached), ticket.started_at, ticket.finished_at, ticket.wait_ms, ticket.duration_ms,
                ticket.id,
            ))
        self._wake.set()

    def record_rejection(self, client: str, query: str, code: str) -> None:
        now = time.time()
        self._inserts.append((
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
            inserts, updates = self._inserts, self._updates
            self._inserts, self._updates = [], []
            if inserts or updates:
                try:
                    await self._db.executemany(INSERT, inserts)
                    await self._db.executemany(UPDATE, updates)
                    await self._db.commit()
                except UnicodeEncodeError:
                    # Text SQLite cannot take (a lone surrogate): retried as is, this batch would fail
                    # forever and every later row with it. Write it with U+FFFD instead, at once.
                    await self._db.rollback()
                    self._put_back([_valid_row(row) for row in inserts], [_valid_row(row) for row in updates])
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
                self.rows_written += len(inserts) + len(updates)
                self.batches += 1
            if self._closing and not self.backlog:
                return

    def _put_back(self, inserts: list[tuple[Any, ...]], updates: list[tuple[Any, ...]]) -> None:
        self._inserts[:0] = inserts
        self._updates[:0] = updates
        self._wake.set()


def _valid_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(valid_text(value) if isinstance(value, str) else value for value in row)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
