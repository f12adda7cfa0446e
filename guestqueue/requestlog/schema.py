"""The SQLite file's schema: the request log's tables, and, as numbered migrations, the tables
the catalog (tenancy/store.py) and the webhooks' outbox (webhooks/outbox.py) keep in the same file.
Whichever part opens the file first applies them (:func:`migrate`); :func:`check` tells
``guestqueue serve`` before it starts whether the file can be written.
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing

import aiosqlite

from ..errors import StartupError

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
CREATE TABLE IF NOT EXISTS instances (
    instance_id   TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL
);
"""
# Numbered: PRAGMA user_version is the number of the last one applied. Each runs once, in order,
# at open; an ADD COLUMN finding its column already there (a file from before the numbering) is
# skipped. Never edit one that shipped: add the next.
MIGRATIONS: tuple[str, ...] = (
    "ALTER TABLE requests ADD COLUMN instance_id TEXT",  # 1: rows carry their instance
    "ALTER TABLE requests ADD COLUMN line TEXT NOT NULL DEFAULT 'guest'",  # 2: ... and their line
    # 3: the catalog (tenancy/catalog.py): applications, API keys (hashes only), lines made at run time
    "CREATE TABLE IF NOT EXISTS applications (id TEXT PRIMARY KEY, body TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, application_id TEXT NOT NULL, body TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS lines (name TEXT PRIMARY KEY, body TEXT NOT NULL);",
    # 4: the webhooks' outbox (webhooks.py): kept before the first attempt, so a restart sends them
    "CREATE TABLE IF NOT EXISTS webhook_deliveries (id TEXT PRIMARY KEY, line TEXT NOT NULL, event TEXT NOT NULL, "
    "url TEXT NOT NULL, secret TEXT NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL, status TEXT NOT NULL, "
    "last_error TEXT, created_at REAL NOT NULL);"
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries (status) WHERE status = 'pending';",
    # 5: the version of the catalog the tables above hold (tenancy/store.py: Redis's, as last seen)
    "CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
)
ADD_COLUMN = re.compile(r"ALTER TABLE (?P<table>\w+) ADD COLUMN (?P<column>\w+)")

COLUMNS = (
    "request_id",
    "client",
    "query",
    "parameters",
    "session_id",
    "status",
    "error_code",
    "error",
    "answer",
    "cached",
    "created_at",
    "started_at",
    "finished_at",
    "wait_ms",
    "processing_ms",
    "instance_id",
    "line",
)
INSERT = f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# instance_id too: with a shared line, the instance that ends a request may not be the one that
# admitted it (the guest resumed elsewhere); the row then belongs to the one still alive.
UPDATED = (
    "status",
    "error_code",
    "error",
    "answer",
    "cached",
    "started_at",
    "finished_at",
    "wait_ms",
    "processing_ms",
    "instance_id",
)
# Each instance writes its own batches, so a row's changes from two instances (a guest whose place
# moved) may land out of order: an ended row is never opened again by a late start (?1: the new status).
UPDATE = (
    f"UPDATE requests SET {', '.join(f'{c} = ?{n}' for n, c in enumerate(UPDATED, 1))} "
    f"WHERE request_id = ?{len(UPDATED) + 1} "
    "AND (status IN ('queued', 'processing') OR ?1 NOT IN ('queued', 'processing'))"
)
# Open rows of instances that stopped beating (or of files from before instances): their writer is gone.
ABANDON = (
    "UPDATE requests SET status = 'abandoned', error_code = 'abandoned', finished_at = :now "
    "WHERE status IN ('queued', 'processing') AND (instance_id IS NULL OR instance_id NOT IN "
    "(SELECT instance_id FROM instances WHERE heartbeat_at >= :alive_since))"
)
FORGET_DEAD = "DELETE FROM instances WHERE heartbeat_at < :alive_since"
HEARTBEAT = (
    "INSERT INTO instances (instance_id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
)
LEAVE = "DELETE FROM instances WHERE instance_id = ?"
NEIGHBOURS = "SELECT instance_id, pid FROM instances WHERE host = ? AND instance_id != ?"
PREPARE = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;" + SCHEMA
# Rows are deleted by rowid in small batches: one DELETE of a month of rows would hold
# the write lock (and every batch of new rows behind it) for seconds.
PRUNE = (
    "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests "
    "WHERE created_at < ? AND status NOT IN ('queued', 'processing') LIMIT ?)"
)


class LogUnavailable(StartupError):
    """The log file cannot be opened for writing; the message is the reason (SQLite's, or ours)."""


async def migrate(db: aiosqlite.Connection) -> None:
    """Apply the migrations this file has not had yet (see :data:`MIGRATIONS`), on the base schema
    (made here too: whichever part opens the file first, the log, the catalog or the outbox)."""
    await db.executescript(SCHEMA)
    applied = next(iter(await db.execute_fetchall("PRAGMA user_version")))[0]
    for number, statement in enumerate(MIGRATIONS, start=1):
        if number <= applied:
            continue
        added = ADD_COLUMN.match(statement)
        if added is None or added["column"] not in await _columns(db, added["table"]):
            await db.executescript(statement)
        await db.execute(f"PRAGMA user_version = {number}")
    await db.commit()


async def _columns(db: aiosqlite.Connection, table: str) -> set[str]:
    return {row[1] for row in await db.execute_fetchall(f"PRAGMA table_info({table})")}


def check(path: str) -> None:
    """Open the log file once, synchronously, as :meth:`RequestLog.open` will; raise
    :class:`LogUnavailable` if it cannot be written. For ``guestqueue serve``, before it starts."""
    check_path(path)
    try:
        with closing(sqlite3.connect(path)) as db:
            db.executescript(PREPARE)
            db.execute("BEGIN IMMEDIATE")
            db.rollback()
    except sqlite3.Error as exc:
        raise LogUnavailable(str(exc)) from None


def check_path(path: str) -> None:
    # SQLite says "unable to open database file" for both; say which.
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise LogUnavailable(f"no such directory: {directory}")
    if os.path.isdir(path):
        raise LogUnavailable("is a directory")
